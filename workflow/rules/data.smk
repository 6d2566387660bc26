# download -> prepare: raw data -> data/prepared/NAME.h5


rule download:
    # Paper experiments only: fetches enwik8 / CIFAR-10 into data/raw/NAME/ (data.download),
    # or stops saying which file to put where (ImageNet64, audio). Runs only while that
    # folder is missing; a folder placed by hand is taken as it is (prepare checks it).
    output: directory("data/raw/{exp}")
    wildcard_constraints: exp="|".join(PAPER)
    params: data=section("data")
    log: "runs/{exp}/logs/download.log"
    shell: "{CLI} prepare --config {PARAMS} --experiment {wildcards.exp} --fetch-only 2>&1 | tee {log}"


def raw_data(wildcards):
    """A quickstart reads its data.input, shipped in data/quickstart/ (digits: none, it is
    in scikit-learn); a paper experiment the folder its download stage makes."""
    if wildcards.exp in QUICKSTARTS:
        return config[wildcards.exp]["data"].get("input") or []
    return f"data/raw/{wildcards.exp}"


rule prepare:
    output: "data/prepared/{exp}.h5"
    input: raw_data
    params: data=section("data")
    log: "runs/{exp}/logs/prepare.log"
    shell: "{CLI} prepare --config {PARAMS} --experiment {wildcards.exp} 2>&1 | tee {log}"
