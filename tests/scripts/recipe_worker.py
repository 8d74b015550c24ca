"""Runs the SEAL recipe and SIGKILLs itself while writing one checkpoint (tests/test_recipe_resume.py).

usage: recipe_worker.py STEP MODE RECIPE_ARGS...
  MODE before-state: killed once the weights, optimizer, scheduler and RNG state of checkpoint-STEP are written,
                     before trainer_state.json (which transformers writes last)
  MODE torn-state:   killed halfway through writing checkpoint-STEP's trainer_state.json
  MODE final-save:   killed halfway through writing the final model's adapter_model.safetensors (after the last
                     checkpoint, STEP unused)
"""

import os
import signal
import sys

from transformers.trainer_callback import TrainerState

from seal_trl.cli.train import cli


def main() -> None:
    step, mode, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    save = TrainerState.save_to_json

    def save_or_die(self, json_path):
        if self.global_step == step:
            if mode == "torn-state":
                save(self, json_path)
                with open(json_path, "r+") as fh:
                    fh.truncate(os.path.getsize(json_path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        save(self, json_path)

    if mode == "final-save":
        import peft.peft_model
        from safetensors.torch import save_file

        def write_half_and_die(tensors, filename, metadata=None):
            if "checkpoint-" not in filename:
                save_file(tensors, filename, metadata=metadata)
                with open(filename, "r+b") as fh:
                    fh.truncate(os.path.getsize(filename) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            save_file(tensors, filename, metadata=metadata)

        peft.peft_model.safe_save_file = write_half_and_die
    else:
        TrainerState.save_to_json = save_or_die
    cli(argv)


if __name__ == "__main__":
    main()
