module.exports = (vars, context) => ({ extra: 'js:' + vars.question });
