module.exports = (output, context) => {
  const word = context.vars.word;
  if (word === 'boom') throw new Error('no boom');
  if (word === 'none') return undefined;
  if (word === 'obj') return { text: output, n: output.length };
  return `<${output}|${word}>`;
};
