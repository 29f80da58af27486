"""shared.checkpoint: a training-state round trip gives back the optimizer exactly."""
import torch

from shared.checkpoint import load_training_state, save_training_state
from shared.model import GPT, GPTConfig
from shared.train import TrainConfig, make_optimizer


def small_model(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=16))


def one_step(model, opt):
    torch.manual_seed(0)  # the same dropout masks for both models
    x = torch.randint(11, (2, 8), generator=torch.Generator().manual_seed(0))
    model(x, x)[1].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def hyperparameters(opt):
    """Every group's settings with their Python types (betas a tuple, lr a float, ...)."""
    return [{k: (type(v), v) for k, v in g.items() if k != "params"} for g in opt.param_groups]


def test_round_trip_restores_hyperparameters_with_their_types(tmp_path):
    cfg = TrainConfig(lr=2e-3, weight_decay=0.05, beta1=0.8, beta2=0.99)
    model = small_model()
    opt = make_optimizer(model, cfg)
    one_step(model, opt)
    path = tmp_path / "state.safetensors"
    rng_state = torch.get_rng_state()
    save_training_state(path, model, opt, {"torch": rng_state}, {"step": 1})

    # load into an optimizer made with other settings: everything must come from the file
    model2 = small_model(seed=1)
    opt2 = make_optimizer(model2, TrainConfig(lr=1.0, weight_decay=0.0, beta1=0.5, beta2=0.5))
    rng, meta = load_training_state(path, model2, opt2)
    assert hyperparameters(opt2) == hyperparameters(opt)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.99) and type(opt2.param_groups[0]["betas"]) is tuple
    assert type(opt2.param_groups[1]["weight_decay"]) is float           # 0.0, not 0
    groups, groups2 = opt.state_dict()["param_groups"], opt2.state_dict()["param_groups"]
    assert [g["params"] for g in groups2] == [g["params"] for g in groups]
    state, state2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert state.keys() == state2.keys()
    for i in state:
        assert state[i].keys() == state2[i].keys() and all(torch.equal(v, state2[i][k]) for k, v in state[i].items())
    assert torch.equal(rng["torch"], rng_state) and meta["step"] == 1

    # and the next step of the restored pair is the next step of the original
    one_step(model, opt)
    one_step(model2, opt2)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))
