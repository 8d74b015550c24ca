"""`accelerate launch recipes/seal.py --config recipes/smollm2-135m/cpu_demo.yaml [--flag value ...]`

The recipe itself lives in `seal_trl/cli/train.py` (so `seal-trl train` and installed users get the same code):
TrlParser over SEALScriptArguments (data), SEALConfig (training, ReST-EM/GRPO, inner loop) and TRL's
ModelConfig (model, policy LoRA, 4-bit); YAML values are defaults, command-line flags override them; it resumes
from the last checkpoint in output_dir, saves, and pushes to the Hub when push_to_hub is set.
"""

from seal_trl.cli.train import cli

if __name__ == "__main__":
    cli()
