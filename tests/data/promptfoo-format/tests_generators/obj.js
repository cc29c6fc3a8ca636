// One test object, not a list: promptfoo reads `- file://obj.js` in a tests list as a glob
// (loadTestsFromGlob), which takes a single object as one test.
module.exports = { vars: { city: 'O' }, assert: [{ type: 'contains', value: 'O' }] };
