import pytest

from sparse_transformer.config import ConfigError, DataConfig, load_data_config


def test_defaults_and_loading():
    cfg = load_data_config({"dataset": "enwik8", "input": "data/raw", "hdf5": "data/enwik8.h5",
                            "split_fractions": [0.8, 0.1, 0.1], "context": 12288, "batch_size": 2})
    assert cfg.split_fractions == (0.8, 0.1, 0.1) and cfg.context == 12288 and cfg.sample_rate == 12000
    assert load_data_config({"dataset": "digits"}) == DataConfig(dataset="digits")


@pytest.mark.parametrize("section, message", [
    ({"dataset": "mnist"}, "data.dataset: unknown dataset 'mnist'"),
    ({"dataset": "enwik8"}, "data.input: the enwik8 source needs"),
    ({"dataset": "digits", "split_fractions": [0.5, 0.5]}, "data.split_fractions"),
    ({"dataset": "digits", "split_fractions": [0.9, 0.2, 0.1]}, "data.split_fractions"),
    ({"dataset": "digits", "batch_size": 0}, "data.batch_size: must be a positive integer"),
    ({"dataset": "digits", "num_workers": -1}, "data.num_workers"),
    ({"dataset": "digits", "context": 0}, "data.context"),
    ({"dataset": "digits", "batchsize": 4}, "data: unknown field"),
    ({"dataset": "digits", "seed": "one"}, "data.seed: expected int"),
])
def test_bad_sections_name_the_field(section, message):
    with pytest.raises(ConfigError, match=message):
        load_data_config(section)
