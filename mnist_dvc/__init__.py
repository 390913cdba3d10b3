"""mnist-dvc's library: what the stages (``stages/``) and the ``mnist-dvc`` command share.

config/ params sections and paths; data/ datasets, IDX, prepared arrays; model/ networks and
model files; training/ the Trainer, data-parallel runs and resume; commands/ the subcommands
of ``mnist-dvc``. Package ``__init__`` files hold no code: a stage's code deps are the
modules it imports (``code_deps``).
"""
