"""The party's memory housekeeping (`mpcc.serving.heap`)."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import gc, weakref
    from mpcc.serving import heap

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return a

    kept = [cycle() for _ in range(1000)]  # alive at start-up: frozen
    heap.freeze_startup_objects()
    assert gc.get_freeze_count() >= 2000, gc.get_freeze_count()
    assert not any(gc.is_tracked(x) and x in gc.get_objects() for x in kept[:3])
    later = cycle()  # serving's garbage is still collected
    gone = []
    weakref.finalize(later, gone.append, True)
    del later
    heap.trim()
    assert gone == [True]
    print("ok")
    """
)


def test_start_up_objects_are_frozen_and_later_cycles_still_collected():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
