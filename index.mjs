// ESM entry of resilient-change-stream: the CommonJS implementation (index.js) re-exported, so
// `import` and `require` share one module instance (one client pool, one set of error classes:
// `instanceof` works across both). Node finds index.js's named exports (cjs-module-lexer:
// its literal export list, and lib/errors.js's `exports.<Class> =` lines), so they are not
// listed again here.
import rcs from './index.js';

export * from './index.js';
export default rcs;
