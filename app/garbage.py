"""Python's cyclic garbage collector, run on the GUI thread only and kept short.

Run in a worker thread (loading, training), a collection that frees Qt wrappers made on the GUI thread can
crash Qt (seen: a segfault in ``gc`` on the loader thread, about 1 run in 10), so automatic collection is off
and the GUI thread collects on a timer, with the interpreter's own thresholds (pyqtgraph's recipe).

A full collection walks every object the collector tracks while holding the GIL, and the window's event loop
stands still meanwhile. With PyTorch, Qt, pyqtgraph and the first-use imports of training and Captum
(matplotlib, SymPy) that is some 430,000 objects: about 0.5 s on a loaded 2-core CPU, once every minute or
so of steady work (the soak's worst ticks, 0.4 to 0.8 s). Nearly all of them are modules' functions, classes
and tables, alive until the process ends. :meth:`GuiCollector.settle` moves what is alive into the
interpreter's permanent generation (``gc.freeze``), which later collections skip: after the warm-up's imports
(:meth:`app.jobs.Jobs.warm_up_once`). What was alive then may become garbage later (the first model, when
another replaces it: a session holds reference cycles), so a new model or data set, or a closed window,
:meth:`thaws <thaw>` it:
the next full collection walks everything once, frees that, and freezes what is still alive again.
"""
from __future__ import annotations

import gc

from PySide6.QtCore import QTimer


class GuiCollector:
    """Collects on a ``interval`` second timer on the thread that makes it (the GUI's), never elsewhere."""

    def __init__(self, interval: float = 0.5) -> None:
        self.threshold = gc.get_threshold()
        self.full_collections = 0
        self.settled = False  # objects are frozen (gc.get_freeze_count() of them)
        self._refreeze = False
        gc.disable()
        self.timer = QTimer()
        self.timer.timeout.connect(self.check)
        self.timer.start(int(interval * 1000))

    def check(self) -> None:
        """Collect the generations whose thresholds are passed, as the interpreter would."""
        l0, l1, l2 = gc.get_count()
        if l0 <= self.threshold[0]:
            return
        gc.collect(0)
        if l1 <= self.threshold[1]:
            return
        gc.collect(1)
        if l2 <= self.threshold[2]:
            return
        gc.collect(2)
        self.full_collections += 1
        if self._refreeze:  # what a thaw let go is gone now: freeze what is alive again
            self._refreeze = False
            gc.freeze()

    def settle(self) -> None:
        """Freeze what is alive now (after the young generations' garbage is collected): later full
        collections skip it."""
        gc.collect(1)
        gc.freeze()
        self.settled = True

    def thaw(self) -> None:
        """What was frozen may be garbage now (a model or data set replaced): the next full collection looks
        at everything once, then freezes again."""
        if self.settled and gc.get_freeze_count():
            gc.unfreeze()
            self._refreeze = True


def collector() -> GuiCollector | None:
    """The application's collector (:func:`app.application.collect_garbage_on_gui_thread`), if there is one."""
    from PySide6.QtCore import QCoreApplication

    found = getattr(QCoreApplication.instance(), "_graft_gc", None)
    return found if isinstance(found, GuiCollector) else None


def settle() -> None:
    """:meth:`GuiCollector.settle` on the application's collector (nothing without one)."""
    found = collector()
    if found is not None:
        found.settle()


def thaw(*_: object) -> None:
    """:meth:`GuiCollector.thaw` on the application's collector (nothing without one)."""
    found = collector()
    if found is not None:
        found.thaw()
