"""The importer of module zips, which compiles each module once."""

import contextlib
import importlib.util
import os
import sys
import zipfile


# Top-level packages of module zips, as prefixes of dotted names: ansible's own and collections'.
ZIP_PACKAGE_ROOTS = ('ansible.', 'ansible_collections.')


# The zip put_zip_first last put first in this process. A task process forked after the
# parent put the same zip first has nothing to do: every package imported since was found
# through that zip's paths first.
zip_put_first = None


def put_zip_first(zip_path):
    """Put a module zip first on sys.path and on the path of every ansible and
    ansible_collections package already imported (from earlier zips). A zip holds everything
    its module needs, so the module's own imports must find this zip's copy first: another
    module's zip may hold a package of the same name (`ansible_collections`, a collection's
    `plugins.module_utils`) with other contents."""
    global zip_put_first
    if zip_put_first == zip_path and sys.path[0] == zip_path:
        return
    zip_put_first = zip_path
    if sys.path[0] != zip_path:
        if zip_path in sys.path:
            sys.path.remove(zip_path)
        sys.path.insert(0, zip_path)
    for name, module in list(sys.modules.items()):
        if not (name + '.').startswith(ZIP_PACKAGE_ROOTS):
            continue
        path = getattr(module, '__path__', None)
        if path is None:
            continue
        subdir = os.path.join(zip_path, *name.split('.'))
        if not path or path[0] != subdir:
            module.__path__ = [subdir] + [entry for entry in path if entry != subdir]


class ZipModules:
    """The agent's importer for module zips, ahead of zipimport on sys.meta_path. zipimport
    compiles a module's source on every import, and twice at that (once to name its file, once
    to run it): for the fifty-odd module_utils of a module zip, about 50 ms of CPU.

    While the agent prepares a zip (`preparing`), its own imports (the module_utils warm-up, the
    module's packages) read that zip here and compile each file once, and `compile_rest` then
    compiles every other source file of the zip: a collection's module_utils, which the module
    imports anew in each task process, take no compile there. Whatever was not compiled that
    way is left to zipimport, which finds the same file: the search follows the same paths."""

    def __init__(self):
        # Zip path -> the names of its members.
        self.members = {}
        # (zip path, member) -> code compiled while preparing, inherited by task processes.
        self.compiled = {}
        # (zip path, ZipFile) while the agent prepares that zip; never open across a fork.
        self.open_archive = None

    @contextlib.contextmanager
    def preparing(self, zip_path):
        archive = zipfile.ZipFile(zip_path)
        self.members[zip_path] = frozenset(archive.namelist())
        self.open_archive = (zip_path, archive)
        try:
            yield
        finally:
            self.open_archive = None
            archive.close()

    def compile_rest(self, zip_path):
        """Compile the zip's source files that are not imported yet (while preparing it)."""
        archive = self.open_archive[1]
        for member in sorted(self.members[zip_path]):
            if not member.endswith('.py') or (zip_path, member) in self.compiled:
                continue
            if module_name_of(member) in sys.modules:
                continue
            try:
                self.compiled[(zip_path, member)] = compile(
                    archive.read(member), os.path.join(zip_path, member), 'exec', dont_inherit=True)
            except (SyntaxError, ValueError):
                pass  # zipimport reports it where the module is imported

    def find_spec(self, fullname, path=None, target=None):
        relative = fullname.replace('.', '/')
        package_dir = os.path.dirname(relative)
        # The entries a path-based import would try, in its order, while they are our zips.
        for entry in sys.path if path is None else path:
            zip_path = self.zip_at(entry, package_dir)
            if zip_path is None:
                return None
            for member, is_package in ((relative + '/__init__.py', True), (relative + '.py', False)):
                if member in self.members[zip_path]:
                    return self.spec(fullname, zip_path, member, is_package)
        return None

    def zip_at(self, entry, package_dir):
        """The known zip whose `package_dir` directory `entry` is, or None. Every import of
        the interpreter and its tasks asks, the standard library's too: no scan of the zips."""
        if package_dir:
            suffix = '/' + package_dir
            if not entry.endswith(suffix):
                return None
            entry = entry[:-len(suffix)]
        return entry if entry in self.members else None

    def spec(self, fullname, zip_path, member, is_package):
        code = self.compiled.get((zip_path, member))
        if code is not None:
            loader = ZipSourceLoader(zip_path, member, code=code)
        elif self.open_archive is not None and self.open_archive[0] == zip_path:
            loader = ZipSourceLoader(zip_path, member, source=self.open_archive[1].read(member))
        else:
            return None
        spec = importlib.util.spec_from_loader(fullname, loader, origin=loader.path, is_package=is_package)
        spec.has_location = True
        if is_package:
            spec.submodule_search_locations.append(os.path.dirname(loader.path))
        return spec


class ZipSourceLoader:
    """One module of a module zip, with the file name and source zipimport would give it."""

    def __init__(self, zip_path, member, source=None, code=None):
        self.zip_path = zip_path
        self.member = member
        self.path = os.path.join(zip_path, member)
        # Dropped once the module has run: the loader lives as long as its module.
        self.source = source
        # Compiled ahead of the import, when the agent prepared the zip.
        self.code = code

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        code = self.get_code(module.__name__)
        self.source = None
        exec(code, module.__dict__)

    def get_code(self, fullname):
        if self.code is not None:
            return self.code
        return compile(self.source_bytes(), self.path, 'exec', dont_inherit=True)

    def get_source(self, fullname):
        """For tracebacks (linecache) and the agent's scan of a module's imports."""
        return importlib.util.decode_source(self.source_bytes())

    def source_bytes(self):
        if self.source is not None:
            return self.source
        # A fresh handle each time: a task process forked from the agent must not share a
        # file offset with it.
        with zipfile.ZipFile(self.zip_path) as archive:
            return archive.read(self.member)


def module_name_of(member):
    """The dotted name of the module in zip member `a/b/__init__.py` or `a/b/c.py`."""
    path = member[:-len('/__init__.py')] if member.endswith('/__init__.py') else member[:-len('.py')]
    return path.replace('/', '.')


def module_utils_in_zip(members):
    """Dotted names of the ansible.module_utils modules among a module zip's members, packages
    first."""
    names = [module_name_of(member) for member in members
             if member.startswith('ansible/module_utils/') and member.endswith('.py')]
    return sorted(names, key=lambda name: (name.count('.'), name))
