// Drives the real npm blynk-library@0.5.4 against a server for tests/compat (see README.md).
// Usage: node node_client.js HOST PORT TOKEN
// Commands on stdin, one JSON object a line:
//   {"op": "write", "pin": 1, "value": "42"}   virtualWrite
//   {"op": "sync", "pin": 1}                   syncVirtual
//   {"op": "syncAll"}                          syncAll
//   {"op": "quit"}
// Events on stdout, one JSON object a line (the library's own console output is not JSON):
//   {"event": "connect"} {"event": "disconnect"} {"event": "error", "error": "..."}
//   {"event": "write", "pin": 1, "values": ["42"]}       a virtual pin's write handler fired
//   {"event": "frame", "dir": "in"|"out", "cmd": 20, "id": 3, "len": 7, "body": "vw\u00001\u000042"}
'use strict';

const Blynk = require('blynk-library');
const readline = require('readline');

const [host, port, token] = process.argv.slice(2);

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// Parse a binary-string byte stream into frames (RESPONSE has no body: its length field is the status).
function frameParser(dir) {
  let buf = '';
  return function (data) {
    buf += data;
    while (buf.length >= 5) {
      const cmd = buf.charCodeAt(0);
      const id = (buf.charCodeAt(1) << 8) | buf.charCodeAt(2);
      const len = (buf.charCodeAt(3) << 8) | buf.charCodeAt(4);
      if (cmd === 0) {
        emit({ event: 'frame', dir, cmd, id, len });
        buf = buf.substr(5);
        continue;
      }
      if (buf.length < 5 + len) return;
      emit({ event: 'frame', dir, cmd, id, len, body: buf.substr(5, len) });
      buf = buf.substr(5 + len);
    }
  };
}

const connector = new Blynk.TcpClient({ addr: host, port: Number(port) });
const onIn = frameParser('in');
const onOut = frameParser('out');
const write = connector.write;
connector.write = function (data) {
  onOut(data);
  return write.call(connector, data);
};

const origReceive = Blynk.Blynk.prototype.onReceive;
Blynk.Blynk.prototype.onReceive = function (data) {
  onIn(data);
  return origReceive.call(this, data);
};

const blynk = new Blynk.Blynk(token, { connector });
blynk.on('connect', () => emit({ event: 'connect' }));
blynk.on('disconnect', () => emit({ event: 'disconnect' }));
blynk.on('error', (err) => emit({ event: 'error', error: String(err) }));

const pins = {};
for (const n of [1, 2, 3]) {
  pins[n] = new blynk.VirtualPin(n);
  pins[n].on('write', (values) => emit({ event: 'write', pin: n, values }));
}

function quit() {
  blynk.disconnect(false);
  // The library may have a reconnect or heartbeat timer armed: leave without waiting for them.
  setTimeout(() => process.exit(0), 50);
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  if (cmd.op === 'write') blynk.virtualWrite(cmd.pin, cmd.value);
  else if (cmd.op === 'sync') blynk.syncVirtual(cmd.pin);
  else if (cmd.op === 'syncAll') blynk.syncAll();
  else if (cmd.op === 'quit') quit();
  emit({ event: 'done', op: cmd.op });
});
rl.on('close', quit);

// Never outlive the test that started us.
setTimeout(() => {
  emit({ event: 'error', error: 'node_client.js lifetime limit' });
  process.exit(2);
}, 60000).unref();
