import lightning as L
import numpy as np
import pytest
import torch

from sparse_transformer.data import digits, hdf5, raw_bytes
from sparse_transformer.data.datamodule import (
    ConsecutiveWindows, ImageDataModule, OrderedImages, RandomWindows, ShuffledImages, StreamDataModule,
    data_module_for,
)
from sparse_transformer.data.errors import DataError

CONTEXT = 16


@pytest.fixture
def text_h5(tmp_path, rng):
    data = rng.integers(0, 256, 10_000, dtype=np.uint8)
    (tmp_path / "t.bin").write_bytes(data.tobytes())
    raw_bytes.prepare(tmp_path / "t.bin", tmp_path / "t.h5", fractions=(0.8, 0.1, 0.1))
    return tmp_path / "t.h5"


@pytest.fixture
def audio_h5(tmp_path):
    """Three recordings of constant bytes 10, 20, 30 so a window's piece is visible."""
    pieces = [np.full(n, v, np.uint8) for n, v in ((50, 10), (17, 20), (40, 30))]
    recipe = hdf5.Recipe(dataset="audio", modality="audio", example_shape=(), sample_rate=12000)

    def write(fh):
        for split in hdf5.SPLITS:
            hdf5.write_split(fh, split, np.concatenate(pieces))
            hdf5.write_boundaries(fh, split, [len(p) for p in pieces], ["a", "b", "c"])

    hdf5.build(tmp_path / "a.h5", recipe, write)
    return tmp_path / "a.h5"


@pytest.fixture
def digits_h5(tmp_path):
    digits.prepare(tmp_path / "d.h5")
    return tmp_path / "d.h5"


def batches(loader, count=None):
    out = []
    for batch in loader:
        out.append(batch)
        if count is not None and len(out) == count:
            break
    return out


def test_stream_batches_are_windows_of_the_split(text_h5):
    dm = StreamDataModule(text_h5, context=CONTEXT, batch_size=4, num_workers=0)
    train = np.asarray(dm.split_array("train")).tobytes()
    batch = next(iter(dm.train_dataloader()))
    assert batch.dtype == torch.uint8 and batch.shape == (4, CONTEXT + 1) and dm.example_length == CONTEXT + 1
    assert all(bytes(row.numpy()) in train for row in batch)
    assert len(dm.train_dataloader()) == 8000 // CONTEXT // 4


def test_stream_evaluation_covers_the_split_in_order(text_h5):
    dm = StreamDataModule(text_h5, context=CONTEXT, batch_size=4, eval_batch_size=7, num_workers=0)
    valid = np.asarray(dm.split_array("valid"))
    windows = torch.cat(batches(dm.val_dataloader())).numpy()
    assert len(windows) == (len(valid) - 1) // CONTEXT
    assert np.array_equal(windows[:, 1:].reshape(-1), valid[1:len(windows) * CONTEXT + 1])  # each target once
    again = torch.cat(batches(dm.val_dataloader())).numpy()
    assert np.array_equal(windows, again)


def test_workers_do_not_change_the_order(text_h5, digits_h5):
    for make in (lambda w: StreamDataModule(text_h5, CONTEXT, 4, num_workers=w),
                 lambda w: ImageDataModule(digits_h5, 4, num_workers=w)):
        serial, parallel = make(0), make(2)
        for a, b in zip(batches(serial.train_dataloader(), 6), batches(parallel.train_dataloader(), 6)):
            assert torch.equal(a, b)
        assert torch.equal(torch.cat(batches(serial.test_dataloader())), torch.cat(batches(parallel.test_dataloader())))


def test_training_windows_stay_inside_one_recording(audio_h5):
    dataset = RandomWindows(audio_h5, "train", window=17, batch_size=64, seed=0)
    rows = np.concatenate([dataset.batch(b) for b in range(20)])
    assert all(len(set(row.tolist())) == 1 for row in rows)  # never mixes two recordings
    assert {row[0] for row in rows} == {10, 20, 30}
    with pytest.raises(DataError, match="no piece of the train split is 60 bytes long"):
        RandomWindows(audio_h5, "train", window=60, batch_size=2, seed=0)


def test_evaluation_windows_stay_inside_one_recording(audio_h5):
    dm = StreamDataModule(audio_h5, context=8, batch_size=2, num_workers=0)
    assert np.array_equal(dm.split_boundaries("valid"), [0, 50, 67, 107])
    rows = torch.cat(batches(dm.val_dataloader())).numpy()
    assert [row[0] for row in rows] == [10] * 6 + [20] * 2 + [30] * 4
    assert all(len(set(row.tolist())) == 1 for row in rows)


def test_image_batches_are_flattened_raster_order(digits_h5):
    dm = data_module_for(digits_h5, batch_size=5, num_workers=0)
    assert isinstance(dm, ImageDataModule) and dm.example_shape == (8, 8, 1) and dm.example_length == 64
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (5, 64) and batch.dtype == torch.uint8
    images = np.asarray(dm.split_array("train")).reshape(len(dm.split_array("train")), -1)
    assert all((images == row.numpy()).all(1).any() for row in batch)
    test = torch.cat(batches(dm.test_dataloader())).numpy()
    assert np.array_equal(test, np.asarray(dm.split_array("test")).reshape(90, 64))


def test_an_image_epoch_is_a_permutation(digits_h5):
    dataset = ShuffledImages(digits_h5, "train", batch_size=7, seed=3)
    count = dataset.count
    rows = np.concatenate([dataset.batch(b) for b in range(count // 7)])
    flat = np.asarray(hdf5.open_split(digits_h5, "train")).reshape(count, -1)
    index = {bytes(r): k for k, r in enumerate(flat)}
    seen = [index[bytes(r)] for r in rows]
    assert len(seen) == len(set(seen)) == count // 7 * 7  # no image twice within an epoch


@pytest.mark.parametrize("kind", ["windows", "images", "eval-windows", "eval-images"])
def test_ranks_get_disjoint_shares(text_h5, digits_h5, kind):
    world = 3
    if kind == "windows":
        make = lambda r: RandomWindows(text_h5, "train", CONTEXT + 1, 4, seed=0, rank=r, world_size=world)
        shares = [np.concatenate([make(r).batch(b) for b in range(5)]) for r in range(world)]
        # same (seed, batch) but different ranks draw different windows
        assert not np.array_equal(shares[0], shares[1])
        single = RandomWindows(text_h5, "train", CONTEXT + 1, 4, seed=0)
        assert np.array_equal(shares[1][:4], single.batch(1))  # rank r of batch b = slot b*world + r
        return
    if kind == "images":
        make = lambda r: ShuffledImages(digits_h5, "train", 5, seed=0, rank=r, world_size=world)
        count = make(0).count
        flat = np.asarray(hdf5.open_split(digits_h5, "train")).reshape(count, -1)
        index = {bytes(r): k for k, r in enumerate(flat)}
        shares = [{index[bytes(row)] for b in range(len(make(r))) for row in make(r).batch(b)} for r in range(world)]
        assert sum(map(len, shares)) == len(set().union(*shares)) == len(make(0)) * 5 * world
        return
    make = (lambda r: ConsecutiveWindows(text_h5, "valid", CONTEXT + 1, 4, rank=r, world_size=world)) \
        if kind == "eval-windows" else (lambda r: OrderedImages(digits_h5, "valid", 4, rank=r, world_size=world))
    shares = [np.concatenate([make(r).batch(b) for b in range(len(make(r)))]) for r in range(world)]
    keys = [bytes(row) for row in np.concatenate(shares)]
    assert len(keys) == len(set(keys))
    single = (ConsecutiveWindows(text_h5, "valid", CONTEXT + 1, 1000) if kind == "eval-windows"
              else OrderedImages(digits_h5, "valid", 1000))
    assert sorted(keys) == sorted(bytes(row) for row in single.batch(0))


def test_a_resumed_loader_continues_the_same_order(text_h5, digits_h5):
    for make in (lambda: StreamDataModule(text_h5, CONTEXT, 4, num_workers=0),
                 lambda: ImageDataModule(digits_h5, 8, num_workers=0)):
        reference = make().train_dataloader()
        epoch = len(reference)
        straight = batches(reference) + batches(reference, 3)  # one epoch, then 3 batches of the next
        assert reference.next_batch == epoch + 3
        resumed = make().train_dataloader()
        resumed.next_batch = epoch - 2
        again = batches(resumed, 5)
        for a, b in zip(again, straight[epoch - 2:]):
            assert torch.equal(a, b)
        assert not torch.equal(straight[0], straight[epoch])  # the next epoch is a new draw


def test_lightning_resume_continues_the_data_order(tmp_path, text_h5):
    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch.clone())
            return (self.weight * batch.float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def fit(max_steps, ckpt=None):
        model = Recorder()
        trainer = L.Trainer(max_steps=max_steps, limit_train_batches=4, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
                            limit_val_batches=0, accelerator="cpu", devices=1)
        trainer.fit(model, datamodule=StreamDataModule(text_h5, CONTEXT, 2, num_workers=0), ckpt_path=ckpt)
        return model.seen, trainer

    straight, _ = fit(7)
    first, trainer = fit(5)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    rest, _ = fit(7, tmp_path / "mid.ckpt")
    assert len(straight) == 7 and len(rest) == 2
    for a, b in zip(first + rest, straight):
        assert torch.equal(a, b)


def test_wrong_module_for_the_modality(text_h5, digits_h5):
    with pytest.raises(DataError, match="holds bytes data; ImageDataModule reads image"):
        ImageDataModule(text_h5, batch_size=2)
    with pytest.raises(DataError, match="give the context"):
        data_module_for(text_h5, batch_size=2)
    assert isinstance(data_module_for(text_h5, batch_size=2, context=8), StreamDataModule)


def test_datasets_pickle_without_an_open_file(text_h5):
    import pickle

    dataset = RandomWindows(text_h5, "train", CONTEXT + 1, 2, seed=0)
    dataset.batch(0)  # opens the memory map in this process
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._data is None and np.array_equal(clone.batch(3), dataset.batch(3))


def test_from_config(text_h5, digits_h5):
    from sparse_transformer.config import DataConfig
    from sparse_transformer.data.datamodule import data_module_from_config

    stream = data_module_from_config(DataConfig(hdf5=str(text_h5), batch_size=3, num_workers=0), model_context=32)
    assert isinstance(stream, StreamDataModule) and stream.example_length == 33
    assert data_module_from_config(DataConfig(hdf5=str(text_h5), context=8), model_context=32).example_length == 9
    images = data_module_from_config(DataConfig(dataset="digits", hdf5=str(digits_h5)), model_context=64)
    assert isinstance(images, ImageDataModule)
    with pytest.raises(DataError, match=r"images of shape \[8, 8, 1\], 64 bytes each, but the model's context is 100"):
        data_module_from_config(DataConfig(dataset="digits", hdf5=str(digits_h5)), model_context=100)


def test_the_dataset_setting_must_be_what_the_file_was_prepared_from(text_h5, audio_h5):
    from sparse_transformer.config import DataConfig
    from sparse_transformer.data.datamodule import data_module_from_config

    with pytest.raises(DataError, match="data.dataset is 'bytes' but .*a.h5 was prepared from 'audio' data: set "
                                        "data.dataset to audio, or prepare .* again"):
        data_module_from_config(DataConfig(dataset="bytes", hdf5=str(audio_h5)), model_context=8)
    assert data_module_for(audio_h5, batch_size=2, context=8, dataset="audio").sample_rate == 12000
