"""What a fresh login would see: pam_env files, the resolver, the environment."""

import os
import pwd
import re
import shlex

from .settings import INHERITED_ENV_FILES, LOGIN_SERVICE


# -- what a fresh login would see ---------------------------------------------------------------
#
# Vanilla Ansible starts a new session for every task (a fresh ssh login, a fresh sudo or su),
# so a task sees what earlier tasks changed in the files PAM's pam_env reads at session start,
# and a resolver configured from the current resolv.conf. A persistent interpreter read them
# once; LoginState brings it up to date before each task (the spec's "Process Environment
# Emulation").

PAM_CONFIG_DIR = '/etc/pam.d'
# pam_env(8)'s defaults for the files it reads.
PAM_ENV_CONFFILE = '/etc/security/pam_env.conf'
PAM_ENV_ENVFILE = '/etc/environment'
PAM_ENV_USER_ENVFILE = '.pam_environment'
RESOLV_CONF = '/etc/resolv.conf'
GROUP_FILE = '/etc/group'
# The process name of an sshd session: the parent of a login interpreter started over ssh.
SSHD_PROCESS_NAMES = ('sshd', 'sshd-session')
ENV_KEY = re.compile(r'[A-Za-z0-9_]+$')
CONF_VALUE = re.compile(r'(DEFAULT|OVERRIDE)=("(?:[^"\\]|\\.)*"|\S*)')
CONF_EXPANSION = re.compile(r'\$\{([^}]*)\}|@\{([^}]*)\}')


def login_service():
    """The PAM service of the session this interpreter runs in: the become tool's for a become
    child, `sshd` for a login over ssh, None otherwise (a local connection has no login)."""
    if LOGIN_SERVICE:
        return LOGIN_SERVICE
    try:
        with open('/proc/%d/comm' % os.getppid()) as comm:
            parent = comm.read().strip()
    except OSError:
        return None
    return 'sshd' if parent in SSHD_PROCESS_NAMES else None


def pam_env_sources(service, home, depth=0):
    """The files pam_env reads in a session of `service`, in its order, as (path, syntax):
    'env' for KEY=VAL files (/etc/environment), 'conf' for pam_env.conf's syntax. Found in
    /etc/pam.d/<service> and the files it includes."""
    try:
        with open(os.path.join(PAM_CONFIG_DIR, service)) as config:
            lines = config.read().splitlines()
    except OSError:
        return []
    sources = []
    for line in lines:
        words = line.split('#', 1)[0].split()
        if len(words) == 2 and words[0] == '@include' and depth < 8:
            sources.extend(pam_env_sources(words[1], home, depth + 1))
            continue
        if len(words) < 3 or words[0].lstrip('-') not in ('auth', 'session'):
            continue
        rest = words[1:]
        # The control field: a word, or a bracketed list that may hold spaces.
        while rest and rest[0].startswith('[') and not rest[0].endswith(']'):
            rest = [rest[0] + ' ' + rest[1]] + rest[2:] if len(rest) > 1 else []
        if len(rest) < 2:
            continue
        control, module, args = rest[0], rest[1], rest[2:]
        if control in ('include', 'substack') and depth < 8:
            sources.extend(pam_env_sources(module, home, depth + 1))
        elif os.path.basename(module) == 'pam_env.so':
            sources.extend(pam_env_files(args, home))
    unique = []
    for source in sources:
        if source not in unique:
            unique.append(source)
    return unique


def pam_env_files(args, home):
    """The files one pam_env line reads, in pam_env's order, from its arguments."""
    options = dict(arg.split('=', 1) if '=' in arg else (arg, '') for arg in args)
    files = [(options.get('conffile', PAM_ENV_CONFFILE), 'conf')]
    if options.get('readenv', '1') != '0':
        files.append((options.get('envfile', PAM_ENV_ENVFILE), 'env'))
    if options.get('user_readenv', '0') != '0' and home:
        files.append((os.path.join(home, options.get('user_envfile', PAM_ENV_USER_ENVFILE)), 'conf'))
    return files


def parse_environment_file(text):
    """A KEY=VAL file as pam_env reads it: [(key, value)], value None to unset. An optional
    `export `; `#` ends the line; one pair of quotes around the value goes."""
    entries = []
    for line in text.splitlines():
        line = line.lstrip()
        if line.startswith('export '):
            line = line[len('export '):]
        line = line.split('#', 1)[0]
        key, has_value, value = line.partition('=')
        if not key or not ENV_KEY.match(key):
            continue
        if has_value and value[:1] in ('"', "'"):
            value = value[1:-1] if len(value) > 1 and value[-1] in ('"', "'") else value[1:]
        entries.append((key, value if has_value else None))
    return entries


def parse_pam_env_conf(text, known, home, shell):
    """pam_env.conf's syntax, `KEY [DEFAULT=value] [OVERRIDE=value]` with `${VAR}`, `@{HOME}`
    and `@{SHELL}` expanded (`known` gives variables already set), or `KEY=VAL`: [(key, value)],
    value None to unset."""
    entries = []
    for line in text.replace('\\\n', ' ').splitlines():
        line = line.split('#', 1)[0].strip()
        key, _, rest = line.partition(' ')
        if '=' in key:
            entries.extend(parse_environment_file(line))
            continue
        if not key or not ENV_KEY.match(key):
            continue
        values = {}
        for name, value in CONF_VALUE.findall(rest):
            if value.startswith('"'):
                value = value[1:-1]

            def expand(match):
                if match.group(1) is not None:
                    return dict(entries).get(match.group(1)) or known.get(match.group(1)) or ''
                return {'HOME': home, 'SHELL': shell}.get(match.group(2), '')

            values[name] = CONF_EXPANSION.sub(expand, value)
        entries.append((key, values.get('OVERRIDE') or values.get('DEFAULT') or None))
    return entries


def file_stamp(path):
    """What tells a changed file from an unchanged one (None: no such file)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns


def reload_resolver():
    """res_init(3): the resolver rereads resolv.conf (glibc rereads it by itself only since
    2.26; other C libraries never do)."""
    import ctypes
    import ctypes.util
    for library in (None, ctypes.util.find_library('resolv')):
        try:
            libc = ctypes.CDLL(library)
        except OSError:
            continue
        for name in ('__res_init', 'res_init'):
            function = getattr(libc, name, None)
            if function is not None:
                return function() == 0
    return False


class LoginState:
    """The state a new session would set up that this interpreter set up once: pam_env's
    variables, the resolver, (for root) the supplementary groups. refresh() applies what
    changed since, before a task."""

    def __init__(self, service):
        entry = pwd.getpwuid(os.geteuid())
        self.account, self.home, self.shell = entry.pw_name, entry.pw_dir, entry.pw_shell
        self.sources = []
        for source in INHERITED_ENV_FILES + (pam_env_sources(service, self.home) if service else []):
            if tuple(source) not in self.sources:
                self.sources.append(tuple(source))
        self.env_stamps = [file_stamp(path) for path, _ in self.sources]
        self.env_values = self.read_env_files()
        self.resolv_stamp = file_stamp(RESOLV_CONF)
        self.group_stamp = file_stamp(GROUP_FILE) if os.geteuid() == 0 else None

    def inherited_by(self, spec):
        """The files a become child's environment comes from through this one: all of them
        where the tool keeps the caller's environment (su without a login shell); none where it
        starts a clean one (sudo, doas, su -l)."""
        flags = set(shlex.split(spec.get('flags') or ''))
        if spec.get('method') == 'su' and not flags & {'-', '-l', '--login'}:
            return self.sources
        return []

    def read_env_files(self):
        """key -> value (None: unset) as the session's pam_env would set them now."""
        values = {}
        for path, syntax in self.sources:
            try:
                with open(path, encoding='utf-8', errors='surrogateescape') as handle:
                    text = handle.read()
            except OSError:
                continue
            if syntax == 'env':
                entries = parse_environment_file(text)
            else:
                entries = parse_pam_env_conf(text, dict(os.environ, **{k: v for k, v in values.items() if v}),
                                             self.home, self.shell)
            values.update(entries)
        return values

    def refresh(self):
        """Apply what changed since the last call; a description of each change made."""
        changes = []
        stamps = [file_stamp(path) for path, _ in self.sources]
        if stamps != self.env_stamps:
            self.env_stamps = stamps
            values = self.read_env_files()
            changes.extend(apply_env_changes(self.env_values, values, os.environ))
            self.env_values = values
        stamp = file_stamp(RESOLV_CONF)
        if stamp != self.resolv_stamp:
            self.resolv_stamp = stamp
            changes.append('%s changed: resolver reloaded (%s)'
                           % (RESOLV_CONF, 'ok' if reload_resolver() else 'res_init unavailable'))
        if self.group_stamp is not None:
            stamp = file_stamp(GROUP_FILE)
            if stamp != self.group_stamp:
                self.group_stamp = stamp
                try:
                    os.initgroups(self.account, os.getgid())
                    changes.append('%s changed: groups now %s' % (GROUP_FILE, os.getgroups()))
                except (OSError, KeyError) as exc:
                    changes.append('%s changed: groups not reloaded: %s' % (GROUP_FILE, exc))
        return changes


def apply_env_changes(old, new, environ):
    """Bring `environ` from pam_env's old values to its new ones where that is safe (the spec,
    "/etc/environment"): a key is set where the environment lacks it or still holds the file's
    old value, and removed where it still holds the file's old value; a key that something
    else changed after pam_env ran (a profile, the task's environment) keeps its value."""
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        current = environ.get(key)
        if current is not None and current != before:
            continue
        if after is None:
            if current is not None:
                del environ[key]
                changes.append('environment: %s removed' % (key,))
        else:
            environ[key] = after
            changes.append('environment: %s set' % (key,))
    return changes
