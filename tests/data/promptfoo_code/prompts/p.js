module.exports = async function ({ vars, provider, config }) { return `JSFN ${vars.name} ${provider.id} ${JSON.stringify(config)}`; };
module.exports.chat = ({ vars }) => [{ role: 'user', content: 'hi ' + vars.name }];
module.exports.withcfg = ({ vars }) => ({ prompt: 'cfg ' + vars.name, config: { temperature: 0.1 } });
