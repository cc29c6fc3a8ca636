module.exports = {
  str: () => 'hello',
  asyncfn: async (output) => output.length > 1,
  num: () => 0.4,
  obj: () => ({ pass: false, score: 0.9, reason: 'objreason' }),
  noreason: () => ({ pass: true, score: 1 }),
  thrower: () => { throw new Error('boom'); },
};
