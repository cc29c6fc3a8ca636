// Loaded once into each mini-racer context: runs inline code and CommonJS modules as promptfoo
// calls them, and answers with one JSON string (or a promise of one).
var __promptopt = (function () {
  const modules = {};
  function describe(value) {
    if (value === undefined) return { type: 'undefined' };
    if (typeof value === 'function') return { type: 'function' };
    return { type: value === null ? 'null' : typeof value, value: value };
  }
  function fail(err) {
    const error = err instanceof Error ? err : new Error(String(err));
    return JSON.stringify({ ok: false, fault: 'raised', type: error.name, message: error.message, trace: String(error.stack || '') });
  }
  function finish(value) {
    if (value && typeof value.then === 'function') {
      return value.then((resolved) => JSON.stringify({ ok: true, ...describe(resolved) }), fail);
    }
    return JSON.stringify({ ok: true, ...describe(value) });
  }
  function prepare(args, style) {
    if ((style === 'check' || style === 'transform') && args[1] && args[1].provider) {
      const provider = args[1].provider;
      if (typeof provider.id === 'string') {
        const id = provider.id;
        args[1].provider = Object.assign({}, provider, { id: () => id });
      }
    }
    return args;
  }
  function moduleValue(imported) {
    return (imported && imported.default && imported.default.default) || (imported && imported.default) || imported;
  }
  function pick(mod, fn, style, file) {
    if (style === 'check') {
      const found = fn ? mod[fn] : mod;
      if (fn && typeof found[fn] === 'function') return found[fn];
      if (typeof found === 'function') return found;
      if (found.default && typeof found.default === 'function') return found.default;
      throw new Error('Assertion malformed: ' + file + ' must export a function or have a default export as a function');
    }
    if (style === 'transform') {
      if (fn && Object.prototype.hasOwnProperty.call(mod, fn) && typeof mod[fn] === 'function') return mod[fn];
      if (typeof mod === 'function') return mod;
      if (mod.default && typeof mod.default === 'function') return mod.default;
      throw new Error('Transform ' + file + ' must export a function, have a default export as a function, or export the specified function "' + fn + '"');
    }
    if (style === 'module') return () => mod;
    if (style === 'generator') {
      // promptfoo's readJavascriptTestCases: importModule(file, fn), called if a function
      const value = fn ? mod[fn] : mod;
      if (fn && value === undefined) throw new Error(file + ' has no export named "' + fn + '"');
      return typeof value === 'function' ? value : () => value;
    }
    const found = fn ? mod[fn] : mod;
    if (typeof found !== 'function') throw new Error(file + ' does not export ' + (fn ? 'a function "' + fn + '"' : 'a function'));
    return found;
  }
  return {
    inline(params, body, args, style, env) {
      try {
        const fn = new Function(...params, body);
        return finish(fn(...prepare(args, style), { env: env }));
      } catch (err) {
        return fail(err);
      }
    },
    module(key, source, file, fn, style, args) {
      try {
        let exported = modules[key];
        if (exported === undefined) {
          const module = { exports: {} };
          const dir = file.replace(/[\\/][^\\/]*$/, '');
          new Function('module', 'exports', '__filename', '__dirname', source)(module, module.exports, file, dir);
          exported = modules[key] = module.exports;
        }
        return finish(pick(moduleValue(exported), fn, style, file)(...prepare(args, style)));
      } catch (err) {
        return fail(err);
      }
    },
  };
})();
