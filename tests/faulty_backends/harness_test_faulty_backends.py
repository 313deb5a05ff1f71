"""Backend plugins, installed the way a user's are (an entry point in the `harness.backends` group, found
through this folder's dist-info when it is on PYTHONPATH), that fail as native code does: ONNX Runtime runs
the model, then the first batch reads a null pointer (SIGSEGV), calls abort() (SIGABRT) or never returns."""
import ctypes
import time

from harness.backends import Backend, Session, get_backend


class _FaultySession(Session):
    """ONNX Runtime's session, taps included (drift runs its candidate tapped), failing before each run."""

    def __init__(self, backend: str, inner: Session, fault):
        super().__init__(backend, inner.device, inner.precision, inner.input_names, inner.output_names,
                         graph=inner.graph)
        self.inner, self.fault, self.tap_methods = inner, fault, inner.tap_methods

    def _run(self, feeds):
        self.fault()
        return self.inner._run(feeds)

    def _tappable(self, names, method):
        return self.inner._tappable(names, method)

    def _tap_runner(self, names, method):
        run = self.inner._tap_runner(names, method)

        def faulty(feeds):
            self.fault()
            return run(feeds)
        return faulty


class _Faulty(Backend):
    package = "onnxruntime"
    load_options = ("artifact",)  # drift runs its ops alone from a cut of the graph

    def _load(self, model, device, precision, threads, **options):
        inner = get_backend("onnxruntime").load(model, device, precision, threads, **options)
        return _FaultySession(self.name, inner, self.fault)


class Segfaults(_Faulty):
    name = "segfaults"

    @staticmethod
    def fault():
        ctypes.string_at(0)  # a null read: SIGSEGV, as a crashing C extension does


class Aborts(_Faulty):
    name = "aborts"

    @staticmethod
    def fault():
        ctypes.CDLL(None).abort()  # SIGABRT, as a failed assertion in native code does


class Hangs(_Faulty):
    name = "hangs"

    @staticmethod
    def fault():
        while True:  # a deadlock in native code, as far as the driver can tell
            time.sleep(1)
