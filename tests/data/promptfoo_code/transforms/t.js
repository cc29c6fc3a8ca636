module.exports = (output, context) => output + '|js|' + Object.keys(context).join(',') + '|' + JSON.stringify(context.prompt).slice(0,80);
module.exports.named = (output) => 'NAMED:' + output;
