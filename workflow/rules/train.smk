# train: data/prepared/NAME.h5 -> runs/NAME/checkpoints/ (+ curve.csv and its figure curve.png, the MLflow run)
#
# The declared output is runs/NAME/checkpoints/finished.json, which `train` writes only
# when training reaches its end. The checkpoints themselves and curve.csv are not
# declared: Snakemake deletes a job's declared outputs before running it and after it
# fails, and a stopped run (SIGTERM or Ctrl-C: exit 143 or 130) must resume from its
# last.ckpt when the job runs again. A checkpoint of other settings is set aside by
# `train` itself, not resumed.

rule train:
    output: "runs/{exp}/checkpoints/finished.json"
    input: rules.prepare.output
    params:
        data=section("data"),
        model=section("model"),
        train=section("train"),
    resources: gpu=gpus
    log: "runs/{exp}/logs/train.log"
    shell: "{CLI} train --config {PARAMS} --experiment {wildcards.exp} 2>&1 | tee {log}"
