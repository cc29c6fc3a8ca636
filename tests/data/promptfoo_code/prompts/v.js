module.exports = function (varName, prompt, otherVars, provider) { return { output: 'JS:' + varName + ':' + otherVars.name + ':' + typeof provider }; };
