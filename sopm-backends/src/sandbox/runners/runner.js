'use strict';
// SOPM runner for node functions (see sandbox/protocol.rs). Started by the sandbox
// prologue with frames on fd 3 (in) and fd 4 (out), a private copy of the log channel on
// fd 5, and fds 1 and 2 (console.log, process.stdout/stderr) on the log channel, so user
// output never touches the frame stream even though node cannot dup2.
//
// TCP mode (`runner.js --listen HOST:PORT`, a Kubernetes pod): this process listens on
// the port and takes two connections from the host, each opened with the line
// `sopm-runner/1 frames|logs <token>`, the token being the pod's secret
// (`SOPM_RUNNER_TOKEN`). A connection with a wrong or late line is closed. Once both
// channels are in, it starts the runner again as a child in pipe mode, with the frames
// connection as fds 3 and 4 and the logs connection as fds 5, 1 and 2 (node cannot dup2,
// so a child is how the descriptors get there), without the token in its environment,
// closes its own copies, and ends with the child.

const fs = require('fs');
const net = require('net');
const path = require('path');

const FRAME_OUT = 4;
const LOG_FD = 5;
const TRACEBACK_CAP = 32 * 1024;
const BASE_ENV = Object.assign({}, process.env);
const PRLIMIT = ['/usr/bin/prlimit', '/bin/prlimit'].find((p) => fs.existsSync(p));
let cpuLimit = null;

function writeAll(fd, buf) {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if (e.code !== 'EAGAIN') throw e;
    }
  }
}

function send(frame) {
  const line = typeof frame === 'string' ? frame : JSON.stringify(frame);
  writeAll(FRAME_OUT, Buffer.from(line + '\n', 'utf8'));
}

function describe(e) {
  if (e instanceof Error) return e.name + ': ' + e.message;
  try {
    return 'thrown: ' + JSON.stringify(e);
  } catch (_) {
    return 'thrown: ' + String(e);
  }
}

function errorResult(id, kind, message, tb) {
  const error = { kind, message };
  if (tb) error.traceback = String(tb).slice(-TRACEBACK_CAP);
  return { type: 'result', id, ok: false, error };
}

function safePath(codeDir, rel) {
  const norm = path.normalize(rel);
  if (path.isAbsolute(norm) || norm === '..' || norm.startsWith('../')) {
    throw new Error('bad path ' + JSON.stringify(rel));
  }
  return path.join(codeDir, norm);
}

let fn = null;

function init(frame) {
  const codeDir = frame.code_dir || '/fn';
  for (const [rel, b64] of Object.entries(frame.files || {})) {
    const p = safePath(codeDir, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, Buffer.from(b64, 'base64'));
  }
  for (const [rel, target] of Object.entries(frame.symlinks || {})) {
    const p = safePath(codeDir, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.symlinkSync(target, p);
  }
  for (const rel of frame.executables || []) fs.chmodSync(safePath(codeDir, rel), 0o755);
  for (const k of Object.keys(process.env)) delete process.env[k];
  Object.assign(process.env, BASE_ENV, frame.env || {});
  process.chdir(codeDir);
  const handler = String(frame.handler || '');
  const dot = handler.lastIndexOf('.');
  if (dot <= 0 || dot === handler.length - 1) {
    throw new Error("node handler must be 'file.export', got " + JSON.stringify(handler));
  }
  const mod = require(safePath(codeDir, handler.slice(0, dot)));
  const f = mod[handler.slice(dot + 1)];
  if (typeof f !== 'function') {
    throw new Error(handler.slice(0, dot) + ' exports no function ' + JSON.stringify(handler.slice(dot + 1)));
  }
  fn = {
    f,
    name: handler,
    maxOutput: Number(frame.max_output_bytes || 1 << 20),
    marker: Buffer.from('\n' + (frame.log_marker || '') + '\n', 'utf8'),
  };
}

function endLogs(marker) {
  try {
    writeAll(LOG_FD, marker);
  } catch (_) {
    // The function closed the log fd; the host notices the missing marker.
  }
}

// RLIMIT_CPU bounds a spinning call where no cgroup does: CPU used so far plus the call's
// budget. Node cannot set rlimits itself, so `prlimit` does; a limit set earlier that
// still lies between what this call needs and that plus its budget is kept, so most
// calls spawn nothing. Past the soft limit the kernel sends SIGXCPU, which ends node.
function setCpuLimit(budgetMs) {
  if (!PRLIMIT) return;
  const u = process.cpuUsage();
  const used = (u.user + u.system) / 1e6;
  const budget = Math.max(0, budgetMs) / 1000 + 2;
  if (cpuLimit !== null && cpuLimit >= used + budget && cpuLimit <= used + 2 * budget) return;
  const soft = Math.ceil(used + 1.5 * budget);
  const r = require('child_process').spawnSync(PRLIMIT, ['--pid', String(process.pid), `--cpu=${soft}:`], {
    stdio: 'ignore',
  });
  cpuLimit = r.status === 0 ? soft : null;
}

async function invoke(frame) {
  const id = frame.id;
  const deadline = Date.now() + Number(frame.deadline_ms || 30000);
  setCpuLimit(deadline - Date.now());
  const context = {
    functionName: fn.name,
    jobId: id,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
  let out;
  try {
    out = await fn.f(frame.input, context);
  } catch (e) {
    return errorResult(id, 'function_error', describe(e), e && e.stack);
  }
  let encoded;
  try {
    encoded = JSON.stringify(out === undefined ? null : out);
  } catch (e) {
    return errorResult(id, 'function_error', 'the output is not JSON: ' + describe(e));
  }
  const size = Buffer.byteLength(encoded, 'utf8');
  if (size > fn.maxOutput) {
    return errorResult(id, 'output_too_large', `the output is ${size} bytes, more than the limit of ${fn.maxOutput}`);
  }
  return '{"type":"result","id":' + JSON.stringify(id) + ',"ok":true,"output":' + encoded + '}';
}

let queue = Promise.resolve();

async function handle(line) {
  let frame;
  try {
    frame = JSON.parse(line);
  } catch (e) {
    process.exit(70);
  }
  if (frame.type === 'init') {
    const marker = Buffer.from('\n' + (frame.log_marker || '') + '\n', 'utf8');
    try {
      init(frame);
      endLogs(marker);
      send({ type: 'ready' });
    } catch (e) {
      endLogs(marker);
      send({ type: 'init_error', message: describe(e), traceback: String((e && e.stack) || '').slice(-TRACEBACK_CAP) });
    }
  } else if (frame.type === 'invoke') {
    if (!fn) {
      send(errorResult(frame.id, 'function_error', 'invoke before init'));
      return;
    }
    const result = await invoke(frame);
    endLogs(fn.marker);
    send(result);
  }
}

function runOnFds() {
  const input = new net.Socket({ fd: 3, readable: true, writable: false });
  let pending = [];
  input.on('data', (chunk) => {
    let start = 0;
    let nl;
    while ((nl = chunk.indexOf(10, start)) !== -1) {
      pending.push(chunk.subarray(start, nl));
      const line = Buffer.concat(pending).toString('utf8');
      pending = [];
      queue = queue.then(() => handle(line));
      start = nl + 1;
    }
    if (start < chunk.length) pending.push(chunk.subarray(start));
  });
  input.on('end', () => queue.then(() => process.exit(0)));
  input.on('error', () => process.exit(0));
  process.on('unhandledRejection', (e) => {
    process.stderr.write('unhandled rejection: ' + describe(e) + '\n');
  });
  process.on('uncaughtException', (e) => {
    process.stderr.write('uncaught exception: ' + ((e && e.stack) || describe(e)) + '\n');
  });
  send({ type: 'hello', runner: 'node' });
}

const AUTH_LINE_MAX = 512;
const AUTH_TIMEOUT_MS = 10000;
const MAX_REFUSED = 64;

function listenForHost(address) {
  const token = Buffer.from(process.env.SOPM_RUNNER_TOKEN || '', 'utf8');
  if (token.length < 16) {
    process.stderr.write('sopm runner: --listen needs SOPM_RUNNER_TOKEN (16 characters or more)\n');
    process.exit(2);
  }
  const env = Object.assign({}, process.env);
  delete env.SOPM_RUNNER_TOKEN;
  const colon = address.lastIndexOf(':');
  const host = (colon > 0 ? address.slice(0, colon) : '').replace(/^\[|\]$/g, '') || '0.0.0.0';
  const port = Number(address.slice(colon + 1));
  const channels = {};
  let refused = 0;
  const server = net.createServer((sock) => {
    let buf = Buffer.alloc(0);
    const refuse = () => {
      clearTimeout(timer);
      sock.destroy();
      if (++refused >= MAX_REFUSED) process.exit(3);
    };
    const timer = setTimeout(refuse, AUTH_TIMEOUT_MS);
    const onData = (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      const nl = buf.indexOf(10);
      if (nl === -1) {
        if (buf.length > AUTH_LINE_MAX) refuse();
        return;
      }
      sock.removeListener('data', onData);
      sock.pause();
      clearTimeout(timer);
      const parts = buf.subarray(0, nl).toString('latin1').split(' ');
      const given = Buffer.from(parts[2] || '', 'latin1');
      const ok =
        nl === buf.length - 1 &&
        parts.length === 3 &&
        parts[0] === 'sopm-runner/1' &&
        (parts[1] === 'frames' || parts[1] === 'logs') &&
        !channels[parts[1]] &&
        given.length === token.length &&
        require('crypto').timingSafeEqual(given, token);
      if (!ok) {
        refuse();
        return;
      }
      channels[parts[1]] = sock;
      if (channels.frames && channels.logs) start();
    };
    sock.on('data', onData);
    sock.on('error', () => {});
  });
  function start() {
    server.close();
    const { spawn } = require('child_process');
    const child = spawn(process.execPath, [...process.execArgv, __filename], {
      env,
      stdio: ['ignore', channels.logs, channels.logs, channels.frames, channels.frames, channels.logs],
    });
    // The child holds the connections now; this process only waits for it.
    channels.frames.destroy();
    channels.logs.destroy();
    child.on('exit', (code, signal) => {
      process.exit(code === null ? 128 + (require('os').constants.signals[signal] || 9) : code);
    });
  }
  server.on('error', (e) => {
    process.stderr.write('sopm runner: cannot listen on ' + address + ': ' + e.message + '\n');
    process.exit(2);
  });
  server.listen(port, host);
}

const listenAt = process.argv.indexOf('--listen');
if (listenAt > 1 && process.argv.length === listenAt + 2) {
  listenForHost(process.argv[listenAt + 1]);
} else {
  runOnFds();
}
