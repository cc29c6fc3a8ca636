// The node child process that runs users' JavaScript modules for pytest-promptopt (checks,
// transforms, prompt functions, var loaders, Nunjucks filters) when they `require` or `import`
// packages, are ESM or TypeScript. One JSON request per line on stdin; each reply is one line on
// stdout starting with "\x1ePROMPTOPT " (console output goes to stderr). Network modules are
// replaced by functions that throw (a guard, not a jail).
import { createRequire, syncBuiltinESMExports } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { pathToFileURL } from 'node:url';
import util from 'node:util';
import { Worker } from 'node:worker_threads';

// End this process, and what the user's code started (its process group, which it leads when
// the sandbox starts it), when the process that started it is gone (pytest killed outright).
// stdin closes then, but a check in an endless loop never lets the event loop read it, and its
// time limit was enforced by the process that is gone: a thread of its own polls the parent.
// unref(): it never keeps the process alive; a thread that cannot start changes nothing.
new Worker(
  `const { workerData } = require('node:worker_threads');
  setInterval(() => {
    if (process.ppid === workerData) return;
    try { process.kill(-process.pid, 'SIGKILL'); } catch { process.kill(process.pid, 'SIGKILL'); }
  }, 500);`,
  { eval: true, workerData: process.ppid },
)
  .on('error', () => {})
  .unref();

const MARK = '\x1ePROMPTOPT ';
const write = process.stdout.write.bind(process.stdout);
for (const name of ['log', 'info', 'debug', 'warn']) {
  console[name] = (...args) => process.stderr.write(util.format(...args) + '\n');
}

const require = createRequire(import.meta.url);
const NO_NETWORK = "network access is disabled for code run by pytest-promptopt's checks";
function refuse() {
  throw new Error(NO_NETWORK);
}
for (const name of ['net', 'tls', 'http', 'https', 'http2', 'dgram', 'dns']) {
  const mod = require(name);
  for (const key of ['connect', 'createConnection', 'request', 'get', 'lookup', 'resolve', 'createSocket']) {
    if (typeof mod[key] === 'function') mod[key] = refuse;
  }
}
require('net').Socket.prototype.connect = refuse;
globalThis.fetch = refuse;
syncBuiltinESMExports();

const TS = new Set(['.ts', '.cts', '.mts']);
const cache = new Map();

async function importFile(file) {
  const key = file + ':' + fs.statSync(file).mtimeMs;
  if (cache.has(key)) return cache.get(key);
  let loaded;
  const ext = path.extname(file).toLowerCase();
  try {
    loaded = await import(pathToFileURL(file).href + '?t=' + encodeURIComponent(key));
  } catch (err) {
    if (!TS.has(ext) || err.code !== 'ERR_UNKNOWN_FILE_EXTENSION') throw err;
    // node < 22.6 cannot strip types: load the file as JavaScript (it works when it has no types)
    const source = fs.readFileSync(file, 'utf8');
    const esm = /^\s*(export|import)\s/m.test(source) || ext === '.mts';
    const copy = path.join(os.tmpdir(), `promptopt-${process.pid}-${cache.size}${esm ? '.mjs' : '.cjs'}`);
    fs.writeFileSync(copy, source);
    try {
      loaded = await import(pathToFileURL(copy).href);
    } catch (inner) {
      if (inner instanceof SyntaxError) {
        throw new Error(
          `${file}: this node (${process.version}) cannot run TypeScript with type annotations ` +
            `(${inner.message}); use node >= 22.6, or write the file as JavaScript`,
        );
      }
      throw inner;
    } finally {
      fs.rmSync(copy, { force: true });
    }
  }
  cache.set(key, loaded);
  return loaded;
}

// promptfoo's importModule: the default export's default, the default export, or the namespace
function moduleValue(imported) {
  return imported?.default?.default || imported?.default || imported;
}

async function pick(request) {
  const mod = moduleValue(await importFile(request.file));
  const fn = request.function;
  if (request.style === 'check') {
    // loadFromJavaScriptFile: importModule(file, fn) returns mod[fn], then looks up fn on that
    const found = fn ? mod[fn] : mod;
    if (fn && typeof found[fn] === 'function') return found[fn];
    if (typeof found === 'function') return found;
    if (found.default && typeof found.default === 'function') return found.default;
    throw new Error(`Assertion malformed: ${request.file} must export a function or have a default export as a function`);
  }
  if (request.style === 'transform') {
    if (fn && Object.prototype.hasOwnProperty.call(mod, fn) && typeof mod[fn] === 'function') return mod[fn];
    if (typeof mod === 'function') return mod;
    if (mod.default && typeof mod.default === 'function') return mod.default;
    throw new Error(
      `Transform ${request.file} must export a function, have a default export as a function, or export the specified function "${fn}"`,
    );
  }
  if (request.style === 'module') return () => mod;
  if (request.style === 'generator') {
    // promptfoo's readJavascriptTestCases: importModule(file, fn), called if a function
    const value = fn ? mod[fn] : mod;
    if (fn && value === undefined) throw new Error(request.file + ' has no export named "' + fn + '"');
    return typeof value === 'function' ? value : () => value;
  }
  const found = fn ? mod[fn] : mod;
  if (typeof found !== 'function') {
    throw new Error(`${request.file} does not export ${fn ? `a function "${fn}"` : 'a function'}`);
  }
  return found;
}

function describe(value) {
  if (value === undefined) return { type: 'undefined' };
  if (typeof value === 'function') return { type: 'function' };
  return { type: value === null ? 'null' : typeof value, value };
}

const processShim = Object.create(process, {
  mainModule: { value: { require: createRequire(path.join(process.cwd(), 'noop.js')) } },
});

async function handle(request) {
  try {
    const args = request.args || [];
    let fn;
    if (request.body !== undefined) {
      const inline = new Function(...request.params, request.body);
      fn = (...given) => inline(...given, processShim);
    } else {
      fn = await pick(request);
    }
    if (request.style === 'check' || request.style === 'transform') {
      const context = args[1] || {};
      const provider = context.provider;
      if (provider && typeof provider === 'object' && typeof provider.id === 'string') {
        const id = provider.id;
        context.provider = { ...provider, id: () => id };
      }
    }
    const value = await fn(...args);
    return { ok: true, ...describe(value) };
  } catch (err) {
    const error = err instanceof Error ? err : new Error(String(err));
    return { ok: false, fault: 'raised', type: error.name, message: error.message, trace: error.stack || '' };
  }
}

write(MARK + '{"ready": true}\n');
const lines = readline.createInterface({ input: process.stdin, terminal: false });
for await (const line of lines) {
  if (!line.trim()) continue;
  const reply = await handle(JSON.parse(line));
  let text;
  try {
    text = JSON.stringify(reply);
  } catch (err) {
    text = JSON.stringify({ ok: false, fault: 'raised', type: 'TypeError', message: String(err.message), trace: '' });
  }
  write(MARK + text + '\n');
}
