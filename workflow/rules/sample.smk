# sample: runs/NAME/checkpoints/ -> runs/NAME/samples/ (PNG / WAV / TXT; also in MLflow)

rule sample:
    output: directory("runs/{exp}/samples")
    input:
        data=rules.prepare.output,
        trained=rules.train.output,  # finished.json: training ended, last.ckpt is final
    params: sample=section("sample")
    resources: gpu=gpus
    log: "runs/{exp}/logs/sample.log"
    shell: "{CLI} sample --config {PARAMS} --experiment {wildcards.exp} 2>&1 | tee {log}"
