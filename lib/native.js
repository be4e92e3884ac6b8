'use strict';

// Finds and loads the Rust addon (docs/native-contract.md) the napi-rs way, without the
// generated loader's cascade of errors:
//
//   1. $NAPI_RS_NATIVE_LIBRARY_PATH, if set (an explicit .node file; napi-rs's override);
//   2. native/resilient-change-stream.<platform>.node next to the package (a source checkout
//      after `npm run build`);
//   3. the installed platform package `resilient-change-stream-<platform>` (an optional
//      dependency of the published package: npm installs only the one matching os/cpu/libc).
//
// Any failure becomes ONE error that names the platform package to install (and, in a source
// checkout, the build command). Loaded on first use, so that `require('resilient-change-stream')`
// works without a binary (typings, pure-JS tests) and the failure surfaces where a stream is made.

const fs = require('node:fs');
const path = require('node:path');
const { NativeAddonError } = require('./errors');

const PACKAGE_ROOT = path.join(__dirname, '..');
const { name: PACKAGE_NAME, version: PACKAGE_VERSION } = require('../package.json');
const BINARY_NAME = 'resilient-change-stream';

/** The platforms a binary is published for (package.json `napi.targets`, npm/<platform>/). */
const SUPPORTED_PLATFORMS = [
  'linux-x64-gnu',
  'linux-x64-musl',
  'linux-arm64-gnu',
  'darwin-x64',
  'darwin-arm64',
  'win32-x64-msvc',
];

/**
 * This process's platform in napi-rs's naming (`<platform>-<arch>[-<abi>]`), e.g.
 * 'linux-x64-gnu', 'darwin-arm64', 'win32-x64-msvc'.
 */
function currentPlatform() {
  const { platform, arch } = process;
  if (platform === 'linux') return `linux-${arch}-${isMusl() ? 'musl' : 'gnu'}`;
  if (platform === 'win32') return `win32-${arch}-msvc`;
  return `${platform}-${arch}`;
}

function isMusl() {
  // The same evidence napi-rs's loader uses: ldd's text, else the glibc version Node reports.
  try {
    return fs.readFileSync('/usr/bin/ldd', 'utf8').includes('musl');
  } catch {
    // no ldd (distroless images): ask Node
  }
  try {
    // Typed loosely: excludeNetwork and the report's shape vary across Node versions.
    /** @type {any} */
    const reporter = process.report;
    if (reporter && typeof reporter.getReport === 'function') {
      reporter.excludeNetwork = true;
      const report = reporter.getReport();
      const header = typeof report === 'string' ? JSON.parse(report).header : report.header;
      return !header?.glibcVersionRuntime;
    }
  } catch {
    // fall through
  }
  return false;
}

function firstLine(err) {
  return String(err?.message ?? err).split('\n')[0];
}

/** Whether `err` says that exactly `request` could not be resolved (not something it requires). */
function isNotFound(err, request) {
  return err?.code === 'MODULE_NOT_FOUND' && firstLine(err).includes(`'${request}'`);
}

function platformPackageName(platform) {
  return `${PACKAGE_NAME}-${platform}`;
}

/** True in a source checkout (where `npm run build` can make the binary). */
function isSourceCheckout() {
  return fs.existsSync(path.join(PACKAGE_ROOT, 'Cargo.toml'));
}

function installAdvice(packageName) {
  const build = isSourceCheckout() ? ', or build it from source with `npm run build`' : '';
  return (
    `Install it with \`npm install ${packageName}@${PACKAGE_VERSION}\`${build}. It is an optional ` +
    'dependency of resilient-change-stream, so it is left out by `--omit=optional`/`--no-optional`, ' +
    'and a lockfile made on another platform can miss it (npm/cli#4828): then delete node_modules ' +
    'and package-lock.json and run `npm install` again.'
  );
}

/**
 * Loads the binary for this platform, or throws one NativeAddonError. Returns the addon's
 * exports.
 */
function loadBinding() {
  const platform = currentPlatform();
  const packageName = platformPackageName(platform);

  const override = process.env.NAPI_RS_NATIVE_LIBRARY_PATH;
  if (override) {
    try {
      return require(override);
    } catch (err) {
      throw new NativeAddonError(
        `resilient-change-stream: cannot load the native addon from NAPI_RS_NATIVE_LIBRARY_PATH ` +
          `(${override}): ${firstLine(err)}`,
        { cause: err, platform, packageName },
      );
    }
  }

  // A binary next to the package: a source checkout after `npm run build`.
  const local = path.join(PACKAGE_ROOT, 'native', `${BINARY_NAME}.${platform}.node`);
  if (fs.existsSync(local)) {
    try {
      return require(local);
    } catch (err) {
      throw new NativeAddonError(
        `resilient-change-stream: the native addon ${local} is broken (${firstLine(err)}). ` +
          'Rebuild it with `npm run build`.',
        { cause: err, platform, packageName },
      );
    }
  }

  if (!SUPPORTED_PLATFORMS.includes(platform)) {
    throw new NativeAddonError(
      `resilient-change-stream has no prebuilt binary for this platform (${platform}, Node ` +
        `${process.version}); binaries exist for ${SUPPORTED_PLATFORMS.join(', ')}. ` +
        'Build it from a source checkout with a Rust toolchain (`npm run build`) and point ' +
        'NAPI_RS_NATIVE_LIBRARY_PATH at the resulting .node file.',
      { platform, packageName },
    );
  }

  // The installed platform package. Its version must be ours: the binary and the JS facade
  // speak a private contract (docs/native-contract.md) that may change in any release.
  let manifest;
  try {
    manifest = require(`${packageName}/package.json`);
  } catch (err) {
    if (!isNotFound(err, `${packageName}/package.json`)) {
      throw new NativeAddonError(
        `resilient-change-stream: the platform package ${packageName} is broken ` +
          `(${firstLine(err)}). Reinstall it: \`npm install ${packageName}@${PACKAGE_VERSION}\`.`,
        { cause: err, platform, packageName },
      );
    }
    throw new NativeAddonError(
      `resilient-change-stream: the native binary for ${platform} is not installed: the package ` +
        `${packageName}@${PACKAGE_VERSION} is missing. ${installAdvice(packageName)}`,
      { cause: err, platform, packageName },
    );
  }
  if (manifest.version !== PACKAGE_VERSION) {
    throw new NativeAddonError(
      `resilient-change-stream ${PACKAGE_VERSION} needs ${packageName}@${PACKAGE_VERSION}, but ` +
        `version ${manifest.version} is installed. Install the matching one: ` +
        `\`npm install ${packageName}@${PACKAGE_VERSION}\`.`,
      { platform, packageName },
    );
  }
  try {
    return require(packageName);
  } catch (err) {
    throw new NativeAddonError(
      `resilient-change-stream: the platform package ${packageName}@${PACKAGE_VERSION} is ` +
        `installed but its binary cannot be loaded (${firstLine(err)}). Reinstall it: ` +
        `\`npm install ${packageName}@${PACKAGE_VERSION}\`.`,
      { cause: err, platform, packageName },
    );
  }
}

let binding = null;

/**
 * The addon's one class, NativeReader (docs/native-contract.md), loaded on first use; a
 * binding without it is an addon of another version.
 * @returns {typeof import('../native/binding').NativeReader}
 */
function nativeReader() {
  binding ??= loadBinding();
  if (typeof binding?.NativeReader?.changeStream !== 'function') {
    throw new NativeAddonError(
      `resilient-change-stream: the loaded native addon does not export NativeReader ` +
        `(expected version ${PACKAGE_VERSION}). Reinstall ${platformPackageName(currentPlatform())}.`,
    );
  }
  return binding.NativeReader;
}

/**
 * The addon's position tools (the `positions` CLI: src/native/positions.rs), loaded on first use.
 * @returns {typeof import('../native/binding').NativePositions}
 */
function nativePositions() {
  binding ??= loadBinding();
  if (typeof binding?.NativePositions?.list !== 'function') {
    throw new NativeAddonError(
      `resilient-change-stream: the loaded native addon does not export NativePositions ` +
        `(expected version ${PACKAGE_VERSION}). Reinstall ${platformPackageName(currentPlatform())}.`,
    );
  }
  return binding.NativePositions;
}

module.exports = {
  nativeReader,
  nativePositions,
  currentPlatform,
  platformPackageName,
  SUPPORTED_PLATFORMS,
  NativeAddonError,
};
