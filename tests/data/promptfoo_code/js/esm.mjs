export default function (output, context) { return context.vars.name === '1'; }
export function named(output) { return output.includes('Hi'); }
