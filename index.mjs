// ESM entry of resilient-change-stream: the CommonJS implementation (index.js) re-exported, so
// `import` and `require` share one module instance (one client pool, one set of error classes:
// `instanceof` works across both).
import rcs from './index.js';

export const {
  ResilientChangeStream,
  ResilientCursor,
  watch,
  ResilientChangeStreamError,
  ChangeStreamHistoryLostError,
  InvalidResumeTokenError,
  ChangeStreamFatalError,
  AuthorizationError,
  InvalidPipelineError,
  RetriesExhaustedError,
  ServerError,
  InvalidOptionError,
  ModeConflictError,
  StreamClosedError,
  TokenStoreError,
  PositionMismatchError,
  NativeAddonError,
} = rcs;

export default rcs;
