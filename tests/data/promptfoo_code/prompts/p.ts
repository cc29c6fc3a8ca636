export default function ({ vars }) {
  return `TS ${vars.name}`;
}
