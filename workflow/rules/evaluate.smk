# evaluate: runs/NAME/checkpoints/ -> runs/NAME/metrics.json (bits per dim; also in MLflow)

rule evaluate:
    output: "runs/{exp}/metrics.json"
    input:
        data=rules.prepare.output,
        trained=rules.train.output,  # finished.json: training ended, last.ckpt is final
    params: evaluate=section("evaluate")
    resources: gpu=gpus
    log: "runs/{exp}/logs/evaluate.log"
    shell: "{CLI} evaluate --config {PARAMS} --experiment {wildcards.exp} 2>&1 | tee {log}"
