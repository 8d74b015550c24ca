"""A registry writer run in a subprocess by tests/test_registry.py.

usage: registry_worker.py crash REGISTRY VERSION_TO_PROMOTE HOOK   (SIGKILL itself at HOOK during a promotion)
       registry_worker.py crash-add REGISTRY HOOK                  (SIGKILL itself at HOOK while adding a version)
       registry_worker.py crash-add-promote REGISTRY HOOK          (the same, adding and promoting in one write)
       registry_worker.py hold REGISTRY READY_FILE SECONDS        (hold the lock, touch READY_FILE, sleep, touch READY_FILE.released)
       registry_worker.py add REGISTRY N TAG                      (add N versions, waiting for the lock)
"""

import os
import signal
import sys
import time

from seal_trl.continual import registry as reg_mod
from seal_trl.continual.registry import AdapterRegistry


def _kill_at(target):
    def hook(name):
        if name == target:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _adapter(seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"m.q_proj.lora_A.weight": torch.randn(2, 8, generator=g),
            "m.q_proj.lora_B.weight": torch.randn(8, 2, generator=g)}


CONFIG = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "peft_type": "LORA"}
PASSED = {"passed": True, "objectives": [], "reasons": []}


def main():
    action, root = sys.argv[1], sys.argv[2]
    if action == "crash":
        registry = AdapterRegistry(root)
        reg_mod.set_write_hook(_kill_at(sys.argv[4]))
        registry.promote(sys.argv[3])
    elif action in ("crash-add", "crash-add-promote"):
        registry = AdapterRegistry(root)
        reg_mod.set_write_hook(_kill_at(sys.argv[3]))
        registry.add_version(_adapter(99), CONFIG, parent=registry.promoted, documents=[], metrics={}, verdict=PASSED,
                             promote=action == "crash-add-promote")
    elif action == "hold":
        registry = AdapterRegistry(root)
        with registry.locked():
            open(sys.argv[3], "w").close()
            time.sleep(float(sys.argv[4]))
            open(sys.argv[3] + ".released", "w").close()  # the last thing done while holding the lock
    elif action == "add":
        registry = AdapterRegistry(root, lock_timeout=60)
        for i in range(int(sys.argv[3])):
            registry.add_version(_adapter(i), CONFIG, parent=None, documents=[{"doc_id": f"{sys.argv[4]}-{i}"}],
                                 metrics={}, verdict=PASSED)
    sys.exit(0)


if __name__ == "__main__":
    main()
