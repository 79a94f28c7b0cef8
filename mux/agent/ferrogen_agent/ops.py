"""The agent's ops: the `op_<name>` methods that Agent.dispatch calls by name."""

import hashlib
import os
import shutil
import stat
import sys

from ansible_ferrogen.frames import MISSING_BLOB, NOT_FOUND, OTHER_INTERPRETER
from ansible_ferrogen.atomic_files import write_atomically
from .transfers import FetchTransfer, PutTransfer
from .continuations import CONTINUATION_CONDITIONS


class AgentOps:
    """The ops the mux calls (`op_<name>`, found by Agent.dispatch); a mixin of Agent,
    whose state they use."""

    # -- ops -------------------------------------------------------------------------------

    def op_ping(self, call_id, args, body):
        self.reply(call_id, {'pid': os.getpid()})

    def op_exec_command(self, call_id, args, body):
        if not isinstance(args.get('cmd'), str):
            raise ValueError('exec_command needs a "cmd" string')
        self.start_task(call_id, 'exec_command', args, stdin=body, emulate_tty=bool(args.get('emulate_tty')))

    def op_run_module(self, call_id, args, body):
        """Run a module. With `then`, a list of {"if": condition, "args": module call}, the
        first of those modules whose condition the first module's result meets runs right after
        it, in the same call: the controller needs one round trip where it would have waited
        twice (docs/protocol.md, "Continuations")."""
        interpreter = args.get('interpreter')
        if interpreter and interpreter not in self.interpreter_names:
            # Another Python (one the login account could not start, or a discovered one
            # this is not): the controller runs the module through the shell, as vanilla would.
            self.reply_error(call_id, OTHER_INTERPRETER, 'the module runs under %s; this interpreter is %s'
                             % (interpreter, sys.executable))
            return
        then = args.get('then') or []
        if then:
            args = dict(args)
            del args['then']
        for branch in then:
            if set(branch) != {'if', 'args'} or branch['if'].get('kind') not in CONTINUATION_CONDITIONS:
                raise ValueError('run_module: each "then" needs "if" (a known condition) and "args"')
        self.ensure_temp_dir()
        for zip_hash in [args['zip']] + [branch['args']['zip'] for branch in then]:
            if zip_hash not in self.blobs:
                self.reply_error(call_id, MISSING_BLOB, 'module zip %s is not cached' % zip_hash)
                return
        self.prepare_module(args)
        self.start_task(call_id, 'run_module', args, stdin=b'', emulate_tty=False, then=then)

    def op_make_dir(self, call_id, args, body):
        """A task's temp dir (usually a detached call: the controller did not wait), private
        to this account like its parents, as `umask 77 && mkdir -p` makes them. Removed at
        exit if the controller has not removed it by then."""
        old_umask = os.umask(0o077)
        try:
            os.makedirs(args['path'], mode=args.get('mode', 0o700), exist_ok=True)
        finally:
            os.umask(old_umask)
        self.task_dirs.add(args['path'])
        self.reply(call_id, {})

    def op_remove_tree(self, call_id, args, body):
        self.task_dirs.discard(args['path'])
        self.received_digests.forget_under(args['path'])
        try:
            shutil.rmtree(args['path'])
        except FileNotFoundError:
            pass
        self.reply(call_id, {})

    def op_add_mode(self, call_id, args, body):
        """chmod u+rwx and the like: add args['bits'] to each path's mode."""
        for path in args['paths']:
            os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) | args['bits'])
        self.reply(call_id, {})

    def op_put_file(self, call_id, args, body):
        """A small file in one call: the body is the content."""
        write_atomically(args['path'], body, args.get('mode'), args.get('owner'), args.get('group'))
        self.reply(call_id, {'size': len(body), 'sha1': hashlib.sha1(body).hexdigest()})

    def op_put_begin(self, call_id, args, body):
        """Open the receiving temp file; chunks follow, the reply comes after put_end."""
        try:
            transfer = PutTransfer(args)
        except FileNotFoundError as exc:
            self.reply_error(call_id, NOT_FOUND, 'cannot write %s: %s' % (args.get('path'), exc))
            return
        self.transfers[call_id] = transfer
        if body:
            self.on_transfer_frame('chunk', {'id': call_id, 'offset': 0}, body)

    def op_fetch_begin(self, call_id, args, body):
        """Send the file, or with `output` the output of that call (finish_streamed_task), in
        chunks, at most a window ahead of the receiver's acks."""
        if 'output' in args:
            transfer = self.spools.pop(args['output'], None)
            if transfer is None:
                self.reply_error(call_id, NOT_FOUND, 'no output of call %s is kept' % (args['output'],))
                return
        else:
            try:
                transfer = FetchTransfer(args['path'])
            except FileNotFoundError as exc:
                self.reply_error(call_id, NOT_FOUND, 'cannot read %s: %s' % (args['path'], exc))
                return
        self.transfers[call_id] = transfer
        try:
            self.pump(call_id, transfer)
        except BaseException:
            self.transfers.pop(call_id, None)
            transfer.abort()
            raise

