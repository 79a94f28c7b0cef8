"""A stand-in agent for the mux's integration tests (loaded through FERROGEN_AGENT_SOURCE).

It speaks the agent link like the real agent but fakes become interpreters in-process:
`spawn` adds an entry to a table, `stop` removes it, and calls addressed to an interpreter
are answered from that entry. It keeps the counts the tests assert on.

Ops: ping -> {pid, interp, user}; stats -> {alive, max_alive, spawns, stops, cancelled,
passwords, blobs (the blob frames received: hash, interp, cached, body length)}; hold -> answered only when a later `release` comes; release -> answers every
held call, then itself; die -> the interpreter "exits": interp_lost, no reply.
Users starting with "bad" fail to spawn (become_failed, "incorrect password"). Users starting
with "late" are spawned only once a call for them has arrived, as a real agent does when it
holds frames sent before the child is up: a mux that waited for `spawned` would hang.
"""

import json
import os
import struct
import sys

PREFIX = struct.Struct('>II')
stdin = sys.stdin.buffer
out = os.fdopen(os.dup(1), 'wb')
os.dup2(2, 1)

interps = {}          # id -> user
max_alive = 0
spawns = 0
stops = []
cancelled = []
passwords = []
held = []             # (id, interp)
blobs = []            # every blob frame received
late = {}             # interp -> user, spawned when its first call comes


def send(header, body=b''):
    data = json.dumps(header).encode()
    out.write(PREFIX.pack(len(data), len(body)) + data + body)
    out.flush()


def read_exact(n):
    buf = b''
    while len(buf) < n:
        chunk = stdin.read(n - len(buf))
        if not chunk:
            sys.exit(0)
        buf += chunk
    return buf


def reply(call_id, result):
    send({'type': 'reply', 'id': call_id, 'ok': True, 'result': result})


def spawned(interp, user):
    global spawns, max_alive
    spawns += 1
    interps[interp] = user
    max_alive = max(max_alive, len(interps))
    send({'type': 'spawned', 'interp': interp, 'ok': True, 'ready': {'pid': 100000 + interp, 'user': user}})


send({'type': 'ready', 'pid': os.getpid(), 'python': sys.executable, 'version': '3',
      'uid': os.getuid(), 'user': 'login', 'home': '/', 'tmpdir': '/tmp'})
while True:
    header_len, body_len = PREFIX.unpack(read_exact(PREFIX.size))
    header = json.loads(read_exact(header_len))
    body = read_exact(body_len)
    kind = header['type']
    interp = header.get('interp', 0)
    if kind == 'spawn':
        become = header['become']
        passwords.append(become.get('password'))
        if become['user'].startswith('bad'):
            send({'type': 'spawned', 'interp': interp, 'ok': False,
                  'error': {'kind': 'become_failed',
                            'message': 'sudo: incorrect password for %s' % become['user']}})
            continue
        if become['user'].startswith('late'):
            late[interp] = become['user']
            continue
        spawned(interp, become['user'])
    elif kind == 'stop':
        interps.pop(interp, None)
        stops.append(interp)
        send({'type': 'stopped', 'interp': interp})
    elif kind == 'cancel':
        cancelled.append(header['id'])
        held = [(i, n) for (i, n) in held if i != header['id']]
    elif kind == 'shutdown':
        sys.exit(0)
    elif kind == 'blob':
        blobs.append({'hash': header['hash'], 'interp': interp, 'cached': header.get('cached', False),
                      'len': len(body)})
    elif kind == 'call':
        if interp in late:
            spawned(interp, late.pop(interp))
        if interp != 0 and interp not in interps:
            send({'type': 'reply', 'id': header['id'], 'ok': False,
                  'error': {'kind': 'agent_error', 'message': 'no interpreter %d' % interp}})
            continue
        op = header['op']
        user = interps.get(interp, 'login')
        if op == 'ping':
            reply(header['id'], {'pid': os.getpid(), 'interp': interp, 'user': user})
        elif op == 'stats':
            reply(header['id'], {'alive': sorted(interps), 'max_alive': max_alive,
                                 'spawns': spawns, 'stops': stops, 'cancelled': cancelled,
                                 'passwords': passwords, 'blobs': blobs})
        elif op == 'hold':
            held.append((header['id'], interp))
        elif op == 'release':
            for call_id, held_interp in held:
                reply(call_id, {'released': True, 'interp': held_interp})
            held = []
            reply(header['id'], {})
        elif op == 'die':
            interps.pop(interp, None)
            send({'type': 'interp_lost', 'interp': interp, 'message': 'python exited with status 1'})
