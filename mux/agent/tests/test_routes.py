"""Connection delegation on the agent's side: a route's process is started from the mux's argv,
its stdin fed from route_data frames, its stdout relayed as route_data, its end reported with
its exit status and stderr tail (route_closed)."""

from __future__ import annotations

import base64
import hashlib
import zlib

import ferrogen_agent
from ferrogen_agent.route_terminal import PromptReader


def frames_until_closed(agent, route):
    return routes_until_closed(agent, route)[route]


def routes_until_closed(agent, *routes):
    """Each route's output and its route_closed frame, once every one of them closed."""
    output = {route: b'' for route in routes}
    closed = {}
    while len(closed) < len(routes):
        header, body = agent.read()
        if header.get('type') == 'route_data' and header['route'] in output:
            output[header['route']] += body
        elif header.get('type') == 'route_closed' and header['route'] in output:
            closed[header['route']] = header
    return {route: (output[route], closed[route]) for route in routes}


def test_a_route_relays_stdio_and_reports_how_it_ended(agent):
    script = 'cat; echo gone >&2; exit 3'
    agent.send({'type': 'route_open', 'route': 4, 'argv': ['sh', '-c', script]}, b'first ')
    agent.send({'type': 'route_data', 'route': 4}, b'second')
    agent.send({'type': 'route_close', 'route': 4})
    output, closed = frames_until_closed(agent, 4)
    assert output == b'first second'
    assert closed['status'] == 3
    assert closed['stderr'] == 'gone\n'


def test_a_route_whose_program_is_missing_says_so(agent):
    agent.send({'type': 'route_open', 'route': 5, 'argv': ['/nonexistent/ssh', 'h']})
    _, closed = frames_until_closed(agent, 5)
    assert closed['status'] == 127
    assert '/nonexistent/ssh' in closed['stderr']


def test_routes_are_independent(agent):
    agent.send({'type': 'route_open', 'route': 1, 'argv': ['sh', '-c', 'cat']})
    agent.send({'type': 'route_open', 'route': 2, 'argv': ['sh', '-c', 'echo two']})
    output, closed = frames_until_closed(agent, 2)
    assert output == b'two\n' and closed['status'] == 0
    agent.send({'type': 'route_data', 'route': 1}, b'one')
    agent.send({'type': 'route_close', 'route': 1})
    output, closed = frames_until_closed(agent, 1)
    assert output == b'one' and closed['status'] == 0


def blob(content: bytes) -> tuple[str, bytes]:
    """A module zip as the mux sends it: base64 text, named by the SHA-1 of that text."""
    text = base64.b64encode(content)
    return hashlib.sha1(text).hexdigest(), text  # noqa: S324 - the blob store's own naming


def test_a_hop_keeps_the_blobs_it_relays_and_serves_them_to_the_next_route(agent):
    agent_module = ferrogen_agent.load()
    digest, text = blob(b'module zip ' * 50)
    content_frame = agent_module.encode_frame({'type': 'blob', 'hash': digest, 'interp': 0}, text)
    call = agent_module.encode_frame({'type': 'call', 'id': 1, 'op': 'ping'}, b'x' * 10000)
    # The first route gets the content inside deflate segments, as the mux sends it.
    deflater = zlib.compressobj(1, zlib.DEFLATED, -15)
    compressed = agent_module.segments(deflater.compress(content_frame) + deflater.flush(zlib.Z_SYNC_FLUSH))
    reference = {'type': 'blob', 'hash': digest, 'interp': 2, 'at_hop': True}
    # The second route names it before the first has it: it waits for it.
    agent.send({'type': 'route_open', 'route': 2, 'argv': ['cat']})
    agent.send({'type': 'route_data', 'route': 2}, agent_module.encode_frame(reference) + call)
    agent.send({'type': 'route_close', 'route': 2})
    agent.send({'type': 'route_open', 'route': 1, 'argv': ['cat']})
    agent.send({'type': 'route_data', 'route': 1}, compressed + call[:100])
    agent.send({'type': 'route_data', 'route': 1}, call[100:])
    agent.send({'type': 'route_close', 'route': 1})
    ended = routes_until_closed(agent, 1, 2)
    output, closed = ended[1]
    assert output == compressed + call and closed['status'] == 0
    output, closed = ended[2]
    served = agent_module.encode_frame({'type': 'blob', 'hash': digest, 'interp': 2}, text)
    assert output == agent_module.encode_frame(reference) + served + call


class BlobStore:
    """The part of the agent a RouteInput uses: its blob store, its routes and its log."""

    def __init__(self):
        self.blobs = {}
        self.routes = {}

    def held_blob(self, digest):
        return self.blobs.get(digest)

    def store_blob(self, digest, content):
        self.blobs[digest] = content

    def log(self, level, message):
        pass


def test_a_patch_of_the_last_call_passes_the_hop_at_once_and_blobs_are_still_kept():
    """A loop item's call crosses as a patch or an increment (link.py): the hop passes it on as
    it arrives, without holding it back for more bytes, passes a short segment once it is whole,
    and still sees the blobs that come after them."""
    agent_module = ferrogen_agent.load()
    hop = BlobStore()
    route_input = agent_module.RouteInput(1)
    call = agent_module.encode_frame({'type': 'call', 'id': 1, 'op': 'ping'})
    patch = agent_module.PATCH_PREFIX.pack(agent_module.PATCH_TAG, 10, 1, 1) + b'2'
    assert route_input.feed(hop, call + patch) == call + patch
    increment = agent_module.INCREMENT_PREFIX.pack(agent_module.INCREMENT_TAG, 20)
    assert route_input.feed(hop, increment) == increment
    deflater = zlib.compressobj(2, zlib.DEFLATED, -15)
    short = agent_module.segments(deflater.compress(call) + deflater.flush(zlib.Z_PARTIAL_FLUSH))
    assert short[0] & 0xc0 == agent_module.SHORT_SEGMENT_FLAG
    assert route_input.feed(hop, short[:1]) == b''
    assert route_input.feed(hop, short[1:]) == short
    digest, text = blob(b'module zip ' * 50)
    content = agent_module.encode_frame({'type': 'blob', 'hash': digest, 'interp': 0}, text)
    assert route_input.feed(hop, content) == content
    assert hop.held_blob(digest) == text


# A stand-in for ssh's password prompt: it reads the answer from its controlling terminal, as
# ssh does, and says what it got (the answer never appears as terminal text: echo is off).
TERMINAL_PROMPT = ("printf 'user@h password: ' >/dev/tty; read -r answer </dev/tty; "
                   "printf 'Password: ' >/dev/tty; read -r again </dev/tty; "
                   "echo \"got $answer, then [$again]\"")


def test_a_route_with_prompts_gets_its_password_on_a_terminal_once(agent):
    prompts = {'password': 'pw-secret-31', 'accept_host_key': False}
    agent.send({'type': 'route_open', 'route': 6, 'argv': ['sh', '-c', TERMINAL_PROMPT], 'prompts': prompts})
    output, closed = frames_until_closed(agent, 6)
    # The second prompt is declined (end of input): one password per connection.
    assert output == b'got pw-secret-31, then []\n'
    assert closed['status'] == 0
    assert 'pw-secret-31' not in closed['stderr']
    assert 'password:' in closed['stderr']


def test_a_route_without_prompts_has_no_terminal(agent):
    agent.send({'type': 'route_open', 'route': 7, 'argv': ['sh', '-c', '(: </dev/tty) 2>/dev/null && echo tty || echo none']})
    output, closed = frames_until_closed(agent, 7)
    assert output == b'none\n', closed


def test_host_keys_follow_host_key_checking():
    prompt = (b"The authenticity of host '[10.0.0.2]:22' can't be established.\n"
              b"Are you sure you want to continue connecting (yes/no/[fingerprint])? ")
    for accept, typed in ((True, b'yes\n'), (False, b'no\n')):
        reader = PromptReader('pw', accept)
        assert reader.typed(reader.feed(prompt)) == typed
    reader = PromptReader('pw', False)
    assert reader.feed(b'Welcome to the bastion\n') is None
    assert reader.feed(b'Verification code: ') == 'decline'


def test_routes_with_prompts_one_after_another(agent):
    """Routes whose process ends at once, its terminal with it, beside ones that answer: the
    agent keeps relaying (a terminal closed in one round of events is not read again)."""
    prompts = {'password': 'pw', 'accept_host_key': False}
    for number in range(10, 14):
        agent.send({'type': 'route_open', 'route': number + 100, 'prompts': prompts,
                    'argv': ['sh', '-c', "printf 'x password: ' >/dev/tty; exit 255"]})
        agent.send({'type': 'route_open', 'route': number, 'argv': ['sh', '-c', TERMINAL_PROMPT], 'prompts': prompts})
        output, closed = b'', {}
        while len(closed) < 2:
            header, body = agent.read()
            if header.get('type') == 'route_data' and header['route'] == number:
                output += body
            elif header.get('type') == 'route_closed':
                closed[header['route']] = header
        assert closed[number + 100]['status'] == 255
        assert output == b'got pw, then []\n', closed


def test_a_route_at_its_prompts_does_not_block_the_agent_with_its_input(agent):
    """ssh reads no stdin before it logs in, and the agent must answer its prompts meanwhile:
    input bigger than any pipe waits in the agent, while the process is prompted twice."""
    prompts = {'password': 'pw', 'accept_host_key': False}
    script = ("printf 'x password: ' >/dev/tty; read -r a </dev/tty; "
              "printf 'Verification code: ' >/dev/tty; read -r b </dev/tty; wc -c")
    payload = b'x' * (3 << 20)
    agent.send({'type': 'route_open', 'route': 20, 'argv': ['sh', '-c', script], 'prompts': prompts}, payload)
    agent.send({'type': 'route_data', 'route': 20}, payload)
    agent.send({'type': 'route_close', 'route': 20})
    output, closed = frames_until_closed(agent, 20)
    assert int(output) == 2 * len(payload), closed
    assert closed['status'] == 0
