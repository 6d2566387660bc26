# Snakemake runs the same stages as dvc.yaml and paper/dvc.yaml, through the same CLI and
# the same params.yaml (tests/test_workflow.py keeps the two in step):
#
#     snakemake --cores 2                      the three quickstarts (the default target)
#     snakemake --cores 8 enwik8               one paper experiment (cifar10, imagenet64, audio)
#     snakemake --cores 2 quickstart_text      one quickstart (quickstart_images, quickstart_audio)
#     snakemake --profile workflow/profiles/slurm enwik8      on a SLURM cluster
#
# Stages (rules): download (paper only) -> prepare -> train -> evaluate, sample; each is
# one call of `sparse-transformer STAGE --config params.yaml --experiment NAME`. Each
# path is written once, as the output of the rule that makes it (the convention the
# config loader fills in, config.conventional_paths); the rules after it take it as
# `rules.NAME.output`. A rule reruns when its inputs, its command
# or its experiment's parameters change (Snakemake's default rerun triggers); unlike
# dvc.yaml, not when the package's code changes (`--forcerun train` after an edit).
# The stages read params.yaml itself: change settings there, not with --config.

configfile: "params.yaml"

QUICKSTARTS = list(config["workflow"]["quickstarts"])
PAPER = list(config["workflow"]["paper"])
EXPERIMENTS = QUICKSTARTS + PAPER
CLI = "sparse-transformer"
PARAMS = "params.yaml"

wildcard_constraints:
    exp="|".join(EXPERIMENTS),


def section(name):
    """The parameters a rule depends on: one section of the experiment."""
    return lambda wildcards: config[wildcards.exp][name]


def gpus(wildcards):
    """GPUs a job of the experiment uses: none for the CPU quickstarts, else train.devices
    (1 when 'auto'). Snakemake's `--resources gpu=N` and the SLURM executor read it."""
    if wildcards.exp in QUICKSTARTS:
        return 0
    devices = config[wildcards.exp]["train"].get("devices", "auto")
    return devices if isinstance(devices, int) else 1


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/sample.smk"


def outputs(exp):
    """What an experiment leaves: its metrics and its samples (and all before them)."""
    return expand([*rules.evaluate.output, *rules.sample.output], exp=exp)


rule quickstarts:
    default_target: True
    input: [path for exp in QUICKSTARTS for path in outputs(exp)]


# one target per experiment: `snakemake --cores N enwik8`, `... quickstart_text`
for _exp in EXPERIMENTS:
    rule:
        name: _exp.replace("-", "_")
        input: outputs(_exp)
