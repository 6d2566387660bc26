# train: data/prepared/NAME.h5 -> runs/NAME/checkpoints/ (+ curve.csv and its figure curve.png, the MLflow run)

rule train:
    output:
        checkpoints=directory("runs/{exp}/checkpoints"),
        curve="runs/{exp}/curve.csv",
        figure="runs/{exp}/curve.png",
    input: "data/prepared/{exp}.h5"
    params:
        data=section("data"),
        model=section("model"),
        train=section("train"),
    resources: gpu=gpus
    log: "runs/{exp}/logs/train.log"
    shell: "{CLI} train --config {PARAMS} --experiment {wildcards.exp} 2>&1 | tee {log}"
