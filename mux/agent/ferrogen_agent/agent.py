"""ferrogen agent: the persistent interpreter that ferrogen-mux starts on a target.

The mux writes this file's source to the interpreter's stdin at connect time; nothing is
installed on the target. The agent then speaks framed messages (docs/protocol.md) over its
original stdin/stdout for the rest of the run.

Every task (a module run or a shell command) runs in a child forked from this process, so a
task can never leave state behind in the interpreter: environment, cwd, sys.argv, patched
modules and open files all die with the child. The parent stays single-threaded, which keeps
fork() safe, and does only bookkeeping: reading frames, caching module zips, reaping children.

Standard library only; Python 3.6 or newer.
"""

import base64
import collections
import errno
import gc
import hashlib
import importlib.util
import os
import pwd
import selectors
import shutil
import signal
import sys
import time
import traceback

from ansible_ferrogen.frames import AGENT_ERROR, BAD_REQUEST, BECOME_FAILED, CANCELLED, CONNECTION_LOST, MAX_BODY, TRANSFER_WINDOW
from ansible_ferrogen.atomic_files import write_atomically
from .settings import LOG_LEVEL, SOURCE
from .link import Channel, read_frames, read_raw
from .debug_file import DebugFile
from .temp_dirs import choose_temp_dir, claim_temp_dir, scratch_file
from .transfers import SPOOLS_KEPT, FetchTransfer, PutTransfer, ReceivedDigests, verified_claims
from .become_relay import BecomeChild, GO_MARKER, PROMPT_SETTLE, TTY_REQUIRED
from .continuations import CONTINUATION_CONDITIONS, OutputTooLarge
from .login_state import LoginState, login_service
from .fork_server import Task, TaskProcess, apply_rlimit_nofile, kill_task_group, lead_own_process_group, parent_death_signaller, close_descriptors_except, enter_task_directory, exit_code, flush_std_streams, freeze_garbage_collector, leave_unreachable_directory, names_of_this_interpreter, receive_task, run_module_in_child
from .routes import ROUTE_FRAMES, RouteStream, on_route_frame, stop_routes
from .process_name import process_title, show_process_title
from .importer import ZipModules, module_utils_in_zip, put_zip_first
from .ops import AgentOps


class Agent(AgentOps):

    def __init__(self):
        self.channel = Channel()
        self.debug_file = DebugFile()
        self.tmpdir, self.tmpdir_lock = choose_temp_dir()
        self.interpreter_names = names_of_this_interpreter()
        self.blobs = {}
        # A read fd on each blob's file, to put it back if the temp dir vanishes.
        self.blob_fds = {}
        self.tasks = {}
        self.pid = os.getpid()
        # What each task process arms its parent-death signal with: looked up (ctypes takes
        # milliseconds to import) when the first spare is forked, off any task's path.
        self.prctl = None
        self.prctl_looked_up = False
        # Become interpreters started through this one, by interp id and by pid.
        self.children = {}
        self.child_pids = {}
        self.warm = False
        # Module zips whose module_utils this interpreter has imported, and modules compiled.
        self.warm_zips = set()
        self.zip_modules = ZipModules()
        sys.meta_path.insert(0, self.zip_modules)
        self.compiled_modules = {}
        # Counts changes to what tasks inherit (blobs, warm zips, compiled modules), so an
        # older spare is not used; and the spare itself, forked once tasks have run.
        self.generation = 0
        self.spare = None
        self.spare_wanted = False
        # Task processes answered for (on_task_done) and not reaped yet.
        self.answered_pids = set()
        # Streamed transfers in progress, by call id (PutTransfer or FetchTransfer).
        self.transfers = {}
        # Task outputs too large for one frame, by call id, until their worker fetches them.
        self.spools = collections.OrderedDict()
        self.received_digests = ReceivedDigests()
        # Task temp dirs made by make_dir and not removed yet.
        self.task_dirs = set()
        self.login_state = LoginState(login_service())
        # Next hops' transports started for the mux (connection delegation), by route number
        # and by pid.
        self.routes = {}
        self.route_pids = {}
        self.selector = selectors.DefaultSelector()
        self.wakeup_r, wakeup_w = os.pipe()
        os.set_blocking(self.wakeup_r, False)
        os.set_blocking(wakeup_w, False)
        signal.set_wakeup_fd(wakeup_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, lambda signum, frame: self.shutdown(0))
        self.selector.register(self.channel.rfd, selectors.EVENT_READ, 'channel')
        self.selector.register(self.wakeup_r, selectors.EVENT_READ, 'wakeup')

    # -- lifecycle -------------------------------------------------------------------------

    def announce(self):
        entry = pwd.getpwuid(os.geteuid())
        self.channel.send({
            'type': 'ready',
            'pid': os.getpid(),
            'python': sys.executable,
            'version': '%d.%d.%d' % sys.version_info[:3],
            'uid': os.geteuid(),
            'user': entry.pw_name,
            'home': entry.pw_dir,
            'tmpdir': self.tmpdir,
        })
        self.log('debug', 'agent ready: pid %d, %s %s, user %s, temp dir %s'
                 % (os.getpid(), sys.executable, sys.version.split()[0], entry.pw_name, self.tmpdir))
        if self.debug_file.detour:
            self.log('warning', self.debug_file.detour)

    def run(self):
        self.announce()
        # Calls the mux sent before our `ready` may be complete already, and no wake-up
        # would come for them.
        self.on_channel_readable()
        while True:
            authenticating = any(c.starting for c in self.children.values())
            for key, _ in self.selector.select(PROMPT_SETTLE / 3 if authenticating else None):
                if key.data == 'channel':
                    self.on_channel_readable()
                elif key.data == 'wakeup':
                    try:
                        while os.read(self.wakeup_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                elif isinstance(key.data, Task):
                    self.on_task_done(key.data)
                elif isinstance(key.data, RouteStream):
                    key.data.route.on_output(self, key.data)
                else:
                    stream, child = key.data
                    self.on_child_output(stream, child)
            if authenticating:
                self.check_prompts()
            if self.spare is None and self.spare_wanted:
                self.spare_wanted = False
                if not self.prctl_looked_up:
                    self.prctl, self.prctl_looked_up = parent_death_signaller(), True
                try:
                    self.spare = self.fork_task_process()
                except OSError as exc:
                    self.log('debug', 'no spare task process: %s' % (exc,))

    def on_channel_readable(self):
        frames = self.channel.read_available()
        if frames is None:
            self.shutdown(0)
        for header, body in frames:
            self.dispatch(header, body)

    def shutdown(self, code):
        for transfer in self.transfers.values():
            transfer.abort()
        for child in self.children.values():
            child.stop()
            child.close_fds()
        stop_routes(self)
        # A running task's process group holds what it started (a command's children and
        # theirs): none of it outlives the link.
        pids = [task.pid for task in self.tasks.values()]
        if self.spare is not None:
            pids.append(self.spare.pid)
        for pid in pids:
            kill_task_group(pid)
        for path in [self.tmpdir, *self.task_dirs]:
            shutil.rmtree(path, ignore_errors=True)
        os._exit(code)

    def log(self, level, message):
        self.debug_file.write(level, message)
        if level != 'debug' or LOG_LEVEL == 'debug':
            self.channel.send({'type': 'log', 'level': level, 'message': message})

    # -- dispatch ----------------------------------------------------------------------------

    def dispatch(self, header, body):
        kind = header.get('type')
        interp = header.get('interp') or 0
        if kind == 'blob' and header.get('at_hop'):
            # The hop in front of us put the content in a blob frame right behind this one.
            return
        if interp and kind in ('call', 'blob', 'cancel', 'chunk', 'put_end', 'ack', 'heartbeat', *ROUTE_FRAMES):
            self.relay(interp, header, body)
        elif kind in ROUTE_FRAMES:
            on_route_frame(self, kind, header, body)
        elif kind == 'heartbeat':
            # Answered at once, whatever tasks run (they run in their own processes): a hop
            # that stays silent is stopped or wedged, not busy (docs/protocol.md).
            self.channel.send({'type': 'heartbeat', 'seq': header.get('seq'), 'pid': os.getpid()})
        elif kind == 'blob':
            # A cached blob names one this agent already kept while relaying it.
            if not header.get('cached'):
                self.store_blob(header['hash'], body)
        elif kind == 'call':
            call_id = header.get('id')
            op = header.get('op')
            self.log('debug', 'call %s: %s' % (call_id, op))
            handler = getattr(self, 'op_' + str(op), None)
            if handler is None:
                self.reply_error(call_id, BAD_REQUEST, 'unknown op %r' % (op,))
                return
            try:
                handler(call_id, header.get('args') or {}, body)
            except Exception as exc:
                self.reply_error(call_id, AGENT_ERROR, '%s: %s' % (type(exc).__name__, exc),
                                 traceback.format_exc())
        elif kind in ('chunk', 'put_end', 'ack'):
            self.on_transfer_frame(kind, header, body)
        elif kind == 'cancel':
            transfer = self.transfers.pop(header.get('id'), None)
            if transfer is not None:
                transfer.abort()
                self.reply_error(header.get('id'), CANCELLED, 'transfer cancelled')
            for task in self.tasks.values():
                if task.call_id == header.get('id'):
                    kill_task_group(task.pid)
        elif kind == 'spawn':
            self.spawn(header)
        elif kind in ('stop', 'kill'):
            child = self.children.get(header.get('interp'))
            if child is None:
                self.channel.send({'type': 'stopped', 'interp': header.get('interp')})
            elif kind == 'kill':
                self.log('warning', 'become %s: interpreter %d answered no heartbeat; killed'
                         % (child.account, child.interp))
                self.watch_child_input(child, False)
                child.kill()
            else:
                self.watch_child_input(child, child.stop())
        elif kind == 'shutdown':
            self.shutdown(0)
        else:
            self.log('warning', 'ignored frame of unknown type %r' % (kind,))

    # -- become interpreters ---------------------------------------------------------------

    def spawn(self, header):
        self.start_child(header['interp'], header.get('become') or {}, header.get('timeout'),
                         cwd=header.get('cwd'))

    def start_child(self, interp, spec, timeout, use_tty=False, held=(), cwd=None):
        """Start become interpreter `interp` (its tool started in `cwd`, if given); `held` are
        frames already sent for it."""
        try:
            if SOURCE is None:
                raise RuntimeError('this agent was not started by the bootstrap stub')
            # The child inherits this interpreter's environment: bring it up to date first.
            self.refresh_login_state()
            child = BecomeChild(interp, spec, SOURCE, timeout, use_tty, self.login_state.inherited_by(spec), cwd)
        except Exception as exc:
            self.channel.send({'type': 'spawned', 'interp': interp, 'ok': False,
                               'error': {'kind': BECOME_FAILED, 'message': str(exc)}})
            self.refuse_held(held, str(exc))
            return
        child.held = list(held)
        self.log('debug', 'become %s: starting interpreter %d through %s (pid %d, %s)'
                 % (child.account, interp, spec.get('exe') or spec.get('method'), child.pid,
                    'with a terminal' if child.use_tty else 'without a terminal'))
        self.children[interp] = child
        self.child_pids[child.pid] = child
        self.selector.register(child.stdout_r, selectors.EVENT_READ, ('stdout', child))
        self.selector.register(child.tty_r, selectors.EVENT_READ, ('tty', child))

    def relay(self, interp, header, body):
        child = self.children.get(interp)
        if child is None or not (child.starting or child.state == 'ready'):
            if header.get('type') == 'call':
                self.reply_error(header.get('id'), CONNECTION_LOST,
                                 'become interpreter %s is not running' % (interp,))
            return
        # To the child, the frame is addressed to itself.
        header = dict(header)
        del header['interp']
        if header.get('type') == 'blob':
            body = self.blob_for_child(header, body)
            if body is None:
                return
        if child.state == 'ready':
            self.deliver(child, header, body)
        else:
            child.held.append((header, body))

    def deliver(self, child, header, body):
        try:
            pending = child.send(header, body)
        except OSError as exc:
            if header.get('type') == 'call':
                self.reply_error(header.get('id'), CONNECTION_LOST,
                                 'become interpreter for %s is gone: %s' % (child.account, exc))
            return
        self.watch_child_input(child, pending)

    def watch_child_input(self, child, pending):
        """Wait for the child's input to take more while frames for it are pending, and no
        longer once none are."""
        if pending and not child.input_watched:
            self.selector.register(child.stdin_w, selectors.EVENT_WRITE, ('stdin', child))
            child.input_watched = True
        elif not pending and child.input_watched:
            self.selector.unregister(child.stdin_w)
            child.input_watched = False

    def on_child_output(self, stream, child):
        fd = {'tty': child.tty_r, 'stdin': child.stdin_w}.get(stream, child.stdout_r)
        registered = self.selector.get_map().get(fd)
        if registered is None or registered.data != (stream, child):
            # An event of the same select() batch as the child's exit (its fds are closed,
            # and their numbers may already belong to a newer child).
            return
        if stream == 'stdin':
            try:
                pending = child.flush()
            except OSError as exc:
                self.log('debug', 'become %s: its input is gone: %s' % (child.account, exc))
                pending = False
            self.watch_child_input(child, pending)
            return
        if stream == 'tty':
            chunk = child.read_tty()
            if chunk is False:
                self.selector.unregister(child.tty_r)
            elif chunk is not True and child.state == 'ready':
                self.log('warning', '[%s] %s' % (child.account, chunk.decode('utf-8', 'replace').rstrip()))
            return
        try:
            if child.state == 'authenticating':
                if not read_raw(child.stdout_r, child.inbuf) or not child.take_go_marker():
                    if len(child.inbuf) >= len(GO_MARKER) and not child.inbuf.startswith(GO_MARKER):
                        raise ValueError('unexpected output before the agent started: %r' % bytes(child.inbuf[:80]))
                    return
            frames = read_frames(child.stdout_r, child.inbuf)
        except ValueError as exc:
            # Its stream is out of step for good: end it, so that its calls fail (interp_lost)
            # rather than wait forever.
            self.log('error', 'become interpreter for %s sent garbage: %s' % (child.account, exc))
            try:
                os.kill(child.pid, signal.SIGKILL)
            except OSError:
                pass
            frames = None
        if frames is None:
            self.selector.unregister(child.stdout_r)
            return
        for header, body in frames:
            if child.state == 'booting' and header.get('type') == 'ready':
                self.log('debug', 'become %s: interpreter %d ready, pid %s' % (child.account, child.interp, header.get('pid')))
                child.state = 'ready'
                child.interpreter_pid = header.get('pid')
                self.channel.send({'type': 'spawned', 'interp': child.interp, 'ok': True, 'ready': header})
                held, child.held = child.held, []
                for held_header, held_body in held:
                    self.deliver(child, held_header, held_body)
            else:
                if header.get('type') == 'heartbeat':
                    # The mux tells its interpreters' heartbeats apart by this.
                    header['interp'] = child.interp
                self.channel.send(header, body)

    def check_prompts(self):
        now = time.monotonic()
        for child in list(self.children.values()):
            if not child.starting:
                continue
            action = child.prompt_action(now)
            if action == 'answer':
                self.log('debug', 'become %s: answering the prompt %r' % (child.account, child.prompt_excerpt()))
                child.answer_prompt()
            elif action is not None:
                self.fail_spawn(child, action)
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except OSError:
                    pass

    def fail_spawn(self, child, message):
        child.state = 'failed'
        self.channel.send({'type': 'spawned', 'interp': child.interp, 'ok': False,
                           'error': {'kind': BECOME_FAILED, 'message': message}})
        held, child.held = child.held, []
        self.refuse_held(held, message)

    def refuse_held(self, held, message):
        """Every call gets its one reply; the mux has failed these already and drops them."""
        for header, _ in held:
            if header.get('type') == 'call':
                self.reply_error(header.get('id'), BECOME_FAILED, message)

    def child_exited(self, child, status):
        self.watch_child_input(child, False)
        for fd in (child.stdout_r, child.tty_r):
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError):
                pass
        if child.starting:
            child.read_tty()
            if not child.use_tty and TTY_REQUIRED in child.prompt_excerpt():
                child.close_fds()
                self.start_child(child.interp, child.spec, child.timeout, use_tty=True, held=child.held,
                                 cwd=child.cwd)
                return
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
            self.fail_spawn(child, 'could not become %s (exit status %d): %s'
                            % (child.account, code, child.prompt_excerpt() or 'no output'))
        elif child.stopping:
            self.channel.send({'type': 'stopped', 'interp': child.interp})
        elif child.state == 'ready':
            self.channel.send({'type': 'interp_lost', 'interp': child.interp,
                               'message': 'become interpreter for %s exited' % (child.account,)})
        child.close_fds()
        if self.children.get(child.interp) is child:
            del self.children[child.interp]

    def reply(self, call_id, result, body=b''):
        self.channel.send({'type': 'reply', 'id': call_id, 'ok': True, 'result': result}, body)

    def reply_error(self, call_id, kind, message, detail=None):
        error = {'kind': kind, 'message': message}
        if detail:
            error['detail'] = detail
        self.channel.send({'type': 'reply', 'id': call_id, 'ok': False, 'error': error})

    def blob_for_child(self, header, body):
        """Keep a copy of every blob relayed to a child; a `cached` blob is only a reference
        to such a copy, so it crosses the network once per target, not once per account."""
        digest = header['hash']
        if not header.pop('cached', False):
            self.store_blob(digest, body)
            return body
        content = self.held_blob(digest)
        if content is None:
            self.log('error', 'blob %s was sent as cached but this agent does not hold it' % digest)
        return content

    def held_blob(self, digest):
        """A blob this agent keeps, as the base64 text it arrived as; None if it has none."""
        fd = self.blob_fds.get(digest)
        if fd is None:
            return None
        # From the descriptor kept on it: the temp dir may have been removed meanwhile.
        return base64.b64encode(os.pread(fd, os.fstat(fd).st_size, 0))

    def store_blob(self, digest, data):
        """Keep a module zip. It arrives as the base64 text Ansible embeds in its payload, so
        the worker can name it without decoding it on every task."""
        if hashlib.sha1(data).hexdigest() != digest:
            self.log('error', 'blob %s arrived corrupted; dropped' % digest)
            return
        try:
            content = base64.b64decode(data, validate=True)
        except ValueError as exc:
            self.log('error', 'blob %s is not base64 (%s); dropped' % (digest, exc))
            return
        path = os.path.join(self.tmpdir, digest + '.zip')
        try:
            self.ensure_temp_dir()
            write_atomically(path, content)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.log('error', 'blob %s cannot be kept in %s (%s); dropped' % (digest, self.tmpdir, exc))
            return
        old_fd = self.blob_fds.pop(digest, None)
        if old_fd is not None:
            os.close(old_fd)
        self.blob_fds[digest] = fd
        self.blobs[digest] = path
        self.generation += 1

    def ensure_temp_dir(self):
        """Put the temp dir back if something removed it (its owner lock is gone with it):
        a sweeper that took us for dead, a cleaner of old files. Blobs return to the same paths,
        which compiled modules and task processes name. Raises OSError, failing the one call,
        if it cannot be done."""
        if os.fstat(self.tmpdir_lock).st_nlink:
            return
        self.log('warning', 'the temp dir %s was removed by someone else; recreating it' % self.tmpdir)
        os.makedirs(self.tmpdir, mode=0o700, exist_ok=True)
        lock_fd = claim_temp_dir(self.tmpdir)
        if lock_fd is None:
            raise OSError(errno.ENOENT, 'the temp dir vanished again while it was recreated', self.tmpdir)
        os.close(self.tmpdir_lock)
        self.tmpdir_lock = lock_fd
        for digest, fd in self.blob_fds.items():
            size = os.fstat(fd).st_size
            write_atomically(self.blobs[digest], os.pread(fd, size, 0))

    def prepare_module(self, args):
        zip_path = self.blobs[args['zip']]
        if (zip_path, args['module_fqn']) in self.compiled_modules:
            return
        with self.zip_modules.preparing(zip_path):
            self.warm_up(zip_path)
            self.zip_modules.compile_rest(zip_path)
            self.compile_module(zip_path, args['module_fqn'])

    def task_main(self, op, args, digests):
        """What the process of an exec_command or run_module task runs. Built in that process
        (a spare forked earlier has the same state; see TaskProcess)."""
        cwd = args.get('cwd')
        if op == 'exec_command':
            shell = pwd.getpwuid(os.geteuid()).pw_shell or '/bin/sh'
            if not os.access(shell, os.X_OK) or shell.endswith(('nologin', 'false')):
                shell = '/bin/sh'

            def exec_command():
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                enter_task_directory(cwd)
                os.execv(shell, [shell, '-c', args['cmd']])

            return exec_command
        zip_path = self.blobs[args['zip']]
        compiled = self.compiled_modules.get((zip_path, args['module_fqn']))

        def run_module():
            os.environ.update(args.get('env') or {})
            enter_task_directory(cwd)
            leave_unreachable_directory()
            apply_rlimit_nofile(args.get('rlimit_nofile'))
            run_module_in_child(zip_path, args, compiled, digests)

        return run_module

    def in_task_dir(self, path):
        """Whether path is in one of the task temp dirs this interpreter made."""
        return any(path.startswith(directory.rstrip('/') + '/') for directory in self.task_dirs)

    def on_transfer_frame(self, kind, header, body):
        call_id = header.get('id')
        transfer = self.transfers.get(call_id)
        if transfer is None:
            return  # failed or cancelled already; the sender learns from the reply
        try:
            if kind == 'chunk' and isinstance(transfer, PutTransfer):
                transfer.write(header.get('offset', transfer.file.size), body)
                self.channel.send({'type': 'ack', 'id': call_id, 'bytes': transfer.file.size})
            elif kind == 'put_end' and isinstance(transfer, PutTransfer):
                del self.transfers[call_id]
                result = transfer.finish(header.get('size'), header.get('sha1'))
                if self.in_task_dir(transfer.file.path):
                    digests = dict(verified_claims(header.get('digests')), sha1=result['sha1'])
                    self.received_digests.record(transfer.file.path, digests)
                    self.log('debug', 'kept the %s of %s for the task\'s modules'
                             % (' and '.join(sorted(digests)), transfer.file.path))
                self.reply(call_id, result)
            elif kind == 'ack' and isinstance(transfer, FetchTransfer):
                transfer.acked = max(transfer.acked, int(header.get('bytes') or 0))
                self.pump(call_id, transfer)
            else:
                raise ValueError('unexpected %r frame' % (kind,))
        except Exception as exc:
            self.transfers.pop(call_id, None)
            transfer.abort()
            self.reply_error(call_id, AGENT_ERROR, '%s: %s' % (type(exc).__name__, exc))

    def pump(self, call_id, transfer):
        while transfer.sent - transfer.acked < TRANSFER_WINDOW:
            data = transfer.read_chunk()
            if not data:
                del self.transfers[call_id]
                transfer.abort()
                self.reply(call_id, {'size': transfer.sent, 'sha1': transfer.digest.hexdigest(),
                                     'mode': transfer.mode})
                return
            self.channel.send({'type': 'chunk', 'id': call_id, 'offset': transfer.sent,
                               'size': transfer.size}, data)
            transfer.sent += len(data)

    # -- tasks -----------------------------------------------------------------------------

    def warm_up(self, zip_path):
        """Import what this zip's modules need once, here, so each forked child starts warm:
        the module_utils Ansible packed for the module (exactly its dependencies). Called
        while zip_modules prepares the zip."""
        if zip_path in self.warm_zips:
            return
        self.warm_zips.add(zip_path)
        self.generation += 1
        put_zip_first(zip_path)
        for name in module_utils_in_zip(self.zip_modules.members[zip_path]):
            try:
                __import__(name)
            except Exception:
                self.log('debug', 'warm-up import of %s failed; tasks import it themselves:\n%s'
                         % (name, traceback.format_exc()))
        if not self.warm:
            self.warm = True
            try:
                __import__('ansible.module_utils._internal._ansiballz._loader')
                from ansible.module_utils.common import json as module_json
                for profile_direction in ((module_json.get_module_decoder, 'CONTROLLER_TO_MODULE'),
                                          (module_json.get_module_encoder, 'MODULE_TO_CONTROLLER')):
                    factory, direction = profile_direction
                    factory('legacy', getattr(module_json.Direction, direction))
            except Exception:
                self.log('debug', 'warm-up import failed; tasks will import cold:\n'
                         + traceback.format_exc())
        freeze_garbage_collector()

    def import_standard_library_of(self, source):
        """Import here the standard modules the module imports at its top level (glob, shlex,
        ...), so that each task's child finds them imported."""
        import ast
        standard = getattr(sys, 'stdlib_module_names', ())
        names = set()
        for node in ast.parse(source).body:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module)
        for name in sorted(names):
            if name.partition('.')[0] in standard and name not in sys.modules:
                try:
                    __import__(name)
                except Exception:
                    self.log('debug', 'warm-up import of %s failed:\n%s' % (name, traceback.format_exc()))

    def compile_module(self, zip_path, module_fqn):
        """(spec, code) of the module, compiled once per interpreter rather than per task."""
        key = (zip_path, module_fqn)
        if key not in self.compiled_modules:
            try:
                spec = importlib.util.find_spec(module_fqn)
                self.compiled_modules[key] = (spec, spec.loader.get_code(module_fqn))
                self.import_standard_library_of(spec.loader.get_source(module_fqn))
            except Exception:
                self.log('debug', 'cannot precompile %s:\n%s' % (module_fqn, traceback.format_exc()))
                self.compiled_modules[key] = None
            freeze_garbage_collector()
            self.generation += 1
        return self.compiled_modules[key]

    def refresh_login_state(self):
        """What a fresh login would see, before a task or a become child (LoginState); a spare
        forked with the old state is not used."""
        for change in self.login_state.refresh():
            self.log('debug', change)
            self.generation += 1

    def start_task(self, call_id, op, args, stdin, emulate_tty, then=(), before=None):
        self.ensure_temp_dir()
        self.refresh_login_state()
        self.spare_wanted = True
        process = self.take_spare()
        digests = self.received_digests.entries if op == 'run_module' else {}
        if process is None or not process.hand_over(op, args, stdin, emulate_tty, digests):
            process = self.fork_task_process()
            if not process.hand_over(op, args, stdin, emulate_tty, digests):
                raise OSError('the task process ended before it was given its task')
        task = self.tasks[process.pid] = Task(call_id, process, emulate_tty, then, before)
        self.selector.register(task.done_fd, selectors.EVENT_READ, task)

    def run_task_process(self, command_fd, done_fd, stdout_file, stderr_file):
        """The body of a freshly forked task process: leave the agent's descriptors and signal
        handlers behind, wait for the task on command_fd, run it, say so on done_fd, exit."""
        code = 1
        task_pid = os.getpid()
        # A task lives milliseconds: collecting would only copy the parent's pages.
        gc.disable()
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            lead_own_process_group(self.prctl, self.pid)
            # The agent's other descriptors (its channel, become children's pipes, other
            # tasks' output) must not outlive it in a task, nor keep a pipe from closing.
            close_descriptors_except({command_fd, done_fd, stdout_file.fileno(), stderr_file.fileno()})
            task = receive_task(command_fd)
            if task is None:
                code = 0
                return
            op, args, stdin, emulate_tty, digests = task
            if stdin:
                stdin_file = scratch_file(self.tmpdir)
                stdin_file.write(stdin)
                stdin_file.flush()
                os.lseek(stdin_file.fileno(), 0, os.SEEK_SET)
                os.dup2(stdin_file.fileno(), 0)
            os.dup2(stdout_file.fileno(), 1)
            os.dup2((stdout_file if emulate_tty else stderr_file).fileno(), 2)
            self.task_main(op, args, digests)()
            code = 0
        except SystemExit as exc:
            code = exit_code(exc.code)
        except BaseException:
            traceback.print_exc()
        finally:
            flush_std_streams()
            # The agent answers the call now, rather than once this large process has been
            # torn down and reaped; not for a process the module forked that ends here too.
            if os.getpid() == task_pid:
                try:
                    os.write(done_fd, bytes([code]))
                except OSError:
                    pass
            os._exit(code)

    def take_spare(self):
        """The spare process, if it was forked from the state a task needs now."""
        spare, self.spare = self.spare, None
        if spare is not None and spare.generation != self.generation:
            spare.discard()
            spare = None
        return spare

    def fork_task_process(self):
        """A task process, waiting for its task. Forked while idle (the spare), a task does not
        wait for the fork."""
        stdout_file = scratch_file(self.tmpdir)
        stderr_file = scratch_file(self.tmpdir)
        command_r, command_w = os.pipe()
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(command_w)
            os.close(done_r)
            self.run_task_process(command_r, done_w, stdout_file, stderr_file)
        try:
            # Here too, so the group exists before a cancel could be sent to it.
            os.setpgid(pid, pid)
        except OSError:
            pass
        os.close(command_r)
        os.close(done_w)
        os.set_blocking(done_r, False)
        return TaskProcess(pid, command_w, done_r, stdout_file, stderr_file, self.generation)

    def on_task_done(self, task):
        """A task process wrote its exit code: its output is complete, answer now. At end of
        file instead (a command's shell replaced the process), the answer waits for reap."""
        if task.done_fd is None:
            return  # reaped in the same round of events, and answered then
        try:
            code = os.read(task.done_fd, 1)
        except BlockingIOError:
            return
        self.stop_watching_done(task)
        if code and self.tasks.pop(task.pid, None) is task:
            self.answered_pids.add(task.pid)
            self.task_ended(task, code[0])

    def stop_watching_done(self, task):
        if task.done_fd is not None:
            self.selector.unregister(task.done_fd)
            os.close(task.done_fd)
            task.done_fd = None

    def task_ended(self, task, rc):
        try:
            rc, stdout, stderr = task.collect(rc)
        except OutputTooLarge as exc:
            self.log('warning', 'call %s: %s' % (task.call_id, exc))
            self.reply_error(task.call_id, 'output_too_large', str(exc))
            return
        if stdout is not None:
            self.log('debug', 'call %s finished: rc %d, %d bytes out, %d bytes err'
                     % (task.call_id, rc, len(stdout), len(stderr)))
        self.finish_task(task, rc, stdout, stderr)

    def reap(self):
        while self.tasks or self.child_pids or self.spare is not None or self.answered_pids or self.route_pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            child = self.child_pids.pop(pid, None)
            if child is not None:
                self.child_exited(child, status)
                continue
            route = self.route_pids.pop(pid, None)
            if route is not None:
                route.exited(self, status)
                continue
            if self.spare is not None and pid == self.spare.pid:
                self.log('debug', 'spare task process %d ended unused (status %d)' % (pid, status))
                self.spare.discard()
                self.spare = None
                continue
            if pid in self.answered_pids:
                self.answered_pids.discard(pid)
                continue
            task = self.tasks.pop(pid, None)
            if task is None:
                continue
            self.stop_watching_done(task)
            self.task_ended(task, Task.exit_status(status))

    def finish_task(self, task, rc, stdout, stderr):
        """Reply to the task's call, or first start its continuation if its condition holds."""
        if stdout is None:
            self.finish_streamed_task(task, rc)
            return
        result, body = {'rc': rc, 'stdout_len': len(stdout)}, stdout + stderr
        if task.before is not None:
            first, first_body, index = task.before
            result = dict(first, then=dict(result, ran=index, body_len=len(body)))
            body = first_body + body
        elif task.then:
            result['then'] = {'ran': None}
            for index, branch in enumerate(task.then):
                condition = branch['if']
                if not (rc == 0 and CONTINUATION_CONDITIONS[condition['kind']](stdout, condition)):
                    continue
                try:
                    self.prepare_module(branch['args'])
                    self.start_task(task.call_id, 'run_module', branch['args'], stdin=b'', emulate_tty=False,
                                    before=(dict(result, body_len=len(body)), body, index))
                    return
                except Exception as exc:
                    self.log('warning', 'call %s: its second module did not start: %s' % (task.call_id, exc))
                break
        if len(body) > MAX_BODY:
            self.reply_error(task.call_id, 'output_too_large', str(OutputTooLarge(len(body))))
            return
        self.reply(task.call_id, result, body)

    def finish_streamed_task(self, task, rc):
        """Reply to a call whose output is too large for one frame: the reply names the
        output (`output`), which the worker then fetches in chunks (docs/protocol.md,
        "Streamed output"). No continuation follows: conditions read a stat module's result,
        which is never that large."""
        prefix = task.before[1] if task.before is not None else b''
        spool = task.spool(prefix)
        if spool.size > MAX_BODY:
            spool.abort()
            self.reply_error(task.call_id, 'output_too_large', str(OutputTooLarge(spool.size)))
            return
        result = {'rc': rc, 'stdout_len': spool.stdout_len}
        if task.before is not None:
            first, _, index = task.before
            result = dict(first, then=dict(result, ran=index, body_len=spool.size - len(prefix)))
        elif task.then:
            result['then'] = {'ran': None}
        self.spools[task.call_id] = spool
        while len(self.spools) > SPOOLS_KEPT:
            self.spools.popitem(last=False)[1].abort()
        self.log('debug', 'call %s: %d bytes of output to be fetched in chunks' % (task.call_id, spool.size))
        self.reply(task.call_id, dict(result, output=task.call_id))



def main():
    show_process_title(process_title())
    try:
        agent = Agent()
    except Exception as exc:
        sys.stderr.write('ferrogen agent failed to start: %s\n' % (exc,))
        raise SystemExit(1) from None
    try:
        agent.run()
    except Exception:
        traceback.print_exc()
        agent.shutdown(1)


if __name__ == '__main__':
    main()
