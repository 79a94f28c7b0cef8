"""Connection delegation on the agent's side: a route's process is started from the mux's argv,
its stdin fed from route_data frames, its stdout relayed as route_data, its end reported with
its exit status and stderr tail (route_closed)."""

from __future__ import annotations


def frames_until_closed(agent, route):
    output, closed = b'', None
    while closed is None:
        header, body = agent.read()
        if header.get('type') == 'route_data' and header['route'] == route:
            output += body
        elif header.get('type') == 'route_closed' and header['route'] == route:
            closed = header
    return output, closed


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
