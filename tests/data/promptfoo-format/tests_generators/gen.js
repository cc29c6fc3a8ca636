// promptfoo's tests from JavaScript: the module (a function, called with the entry's `config`,
// or undefined), or a named export (here an array, taken as it is).
module.exports = async function (config) {
  return [{ vars: { city: 'J' + (config ? config.tag : 'none') }, assert: [{ type: 'contains', value: 'J' }] }];
};
module.exports.fixed = [
  { vars: { city: 'F' }, assert: [{ type: 'icontains', value: 'f' }] },
  { vars: { city: 'G' }, assert: [{ type: 'contains', value: 'Z' }] },
];
