import logging

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForSequenceClassification, TrainingArguments
from trl.trainer.reward_trainer import DataCollatorForPreference

from bt_peft import BradleyTerryRewardTrainer, bt_reward, load_qlora_model
from bt_peft.quantization import load_reward_model, nf4_config
from bt_peft.tokenizer import load_tokenizer
from conftest import fp32_args, preference_rows

NF4 = nf4_config(torch.float32)


@pytest.fixture
def qlora(tiny_llama_dir):
    return load_qlora_model(tiny_llama_dir, compute_dtype=torch.float32)


def make_trainer(qlora, tmp_path, rows=None, **overrides):
    model, tokenizer = qlora
    dataset = Dataset.from_list(rows or preference_rows())
    return BradleyTerryRewardTrainer(model=model, args=fp32_args(tmp_path, **overrides), train_dataset=dataset,
                                     eval_dataset=dataset, processing_class=tokenizer)


def test_training_lowers_eval_loss(qlora, tmp_path):
    trainer = make_trainer(qlora, tmp_path, max_steps=12)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before - 0.05
    assert after["eval_accuracy"] == 1.0


def test_logs_pair_metrics_in_train_and_eval(qlora, tmp_path):
    trainer = make_trainer(qlora, tmp_path, max_steps=2)
    trainer.train()
    trainer.evaluate()
    train_logs = next(log for log in trainer.state.log_history if "loss" in log)
    eval_logs = next(log for log in trainer.state.log_history if "eval_loss" in log)
    for key in ("accuracy", "margin", "chosen_reward", "rejected_reward"):
        assert key in train_logs and f"eval_{key}" in eval_logs
    assert eval_logs["eval_margin"] == pytest.approx(eval_logs["eval_chosen_reward"] - eval_logs["eval_rejected_reward"], abs=1e-5)


def test_trainable_parameters_keep_their_dtype_under_bf16_args(qlora, tmp_path):
    trainer = make_trainer(qlora, tmp_path, bf16=True, use_cpu=True)
    dtypes = {name: p.dtype for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("score" in name for name in dtypes) and any("lora_A" in name for name in dtypes)
    assert set(dtypes.values()) == {torch.float32}



class MovingTrainer(BradleyTerryRewardTrainer):
    """What a GPU host does to a model loaded without a device map: the Trainer moves it to `args.device` inside
    its `__init__`; here to `meta`, the one other device a CPU has."""

    def _move_model_to_device(self, model, device):
        super()._move_model_to_device(model, torch.device("meta"))


def test_trainable_parameters_stay_where_the_trainer_moved_the_model(tiny_llama_dir, tmp_path):
    """Defect 3: the trainable parameters keep their dtype and stay where the Trainer moved them (no bf16 cast, no
    pre-move tensors put back)."""
    model = load_reward_model(tiny_llama_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS")
    trainer = MovingTrainer(model=model, args=fp32_args(tmp_path), peft_config=lora, train_dataset=Dataset.from_list(
        preference_rows(1)), processing_class=load_tokenizer(tiny_llama_dir))
    trainable = {name: param for name, param in trainer.model.named_parameters() if param.requires_grad}
    assert trainable and {param.device.type for param in trainer.model.parameters()} == {"meta"}
    assert {param.dtype for param in trainable.values()} == {torch.float32}

def test_compute_loss_is_bradley_terry_on_logit_one_with_margin_and_centering(qlora, tmp_path):
    rows = [dict(row, margin=0.25 * i) for i, row in enumerate(preference_rows(1))]
    trainer = make_trainer(qlora, tmp_path, rows=rows, center_rewards_coefficient=0.1)
    examples = [trainer.train_dataset[i] for i in range(4)]
    batch = DataCollatorForPreference(trainer.processing_class.pad_token_id)(examples)  # padded, for the reference
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, trainer.data_collator(examples))  # packed, as in training
        rewards = bt_reward(trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)
    chosen, rejected = rewards[:4], rewards[4:]
    margin = torch.tensor([0.0, 0.25, 0.5, 0.75])
    expected = -torch.nn.functional.logsigmoid(chosen - rejected - margin).mean() + 0.1 * ((chosen + rejected) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_model_name_with_quantization_and_peft_config(tiny_llama_dir, tmp_path):
    import bitsandbytes as bnb

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS")
    trainer = BradleyTerryRewardTrainer(
        model=str(tiny_llama_dir),
        args=fp32_args(tmp_path, max_steps=2, model_init_kwargs={"dtype": torch.float32}),
        train_dataset=Dataset.from_list(preference_rows()),
        quantization_config=NF4,
        peft_config=lora,
    )
    assert isinstance(trainer.model, PeftModel) and trainer.model.config.num_labels == 2
    assert trainer.processing_class.pad_token == "<|endoftext|>"
    assert isinstance(trainer.model.base_model.model.model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    head = trainer.model.base_model.model.score.modules_to_save["default"]
    assert type(head) is torch.nn.Linear and head.weight.dtype == torch.float32 and head.weight.requires_grad
    before = head.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, head.weight.detach())


def test_single_label_model_is_refused_with_a_clear_error(tiny_llama_dir, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=1)
    with pytest.raises(ValueError, match="2-label head"):
        BradleyTerryRewardTrainer(model=model, args=fp32_args(tmp_path), train_dataset=Dataset.from_list(preference_rows()))


def test_the_model_keeps_its_two_label_config(qlora, tmp_path):
    trainer = make_trainer(qlora, tmp_path)
    assert trainer.model.config.num_labels == 2 and trainer.model.config.id2label[1] == "reward"


def test_a_plain_training_arguments_config_trains_and_evaluates_a_dict_of_eval_sets(qlora, tmp_path):
    model, tokenizer = qlora
    rows = preference_rows()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, save_strategy="no")
    trainer = BradleyTerryRewardTrainer(model=model, args=args, processing_class=tokenizer,
                                        train_dataset=Dataset.from_list(rows),
                                        eval_dataset={"first": Dataset.from_list(rows[:4]), "rest": Dataset.from_list(rows[4:])})
    assert set(trainer.preparation_reports) == {"train", "first", "rest"}
    trainer.train()
    metrics = trainer.evaluate()
    assert {"eval_first_loss", "eval_rest_loss"} <= metrics.keys()
    assert "eval_accuracy" in next(logs for logs in trainer.state.log_history if "eval_rest_loss" in logs)
    more = trainer.evaluate(Dataset.from_list(rows[:2]), metric_key_prefix="extra")
    assert trainer.preparation_reports["eval"].kept == 2 and "extra_loss" in more


def test_base_model_dropout_is_off_and_the_data_report_is_logged(tiny_llama_dir, tmp_path, caplog):
    model = load_reward_model(tiny_llama_dir, dtype=torch.float32)
    model.model.extra_dropout = torch.nn.Dropout(0.2)  # a base-model dropout, as in models that have one
    lora = LoraConfig(r=4, target_modules=["q_proj"], lora_dropout=0.1, task_type="SEQ_CLS")
    with caplog.at_level(logging.INFO, logger="bt_peft.training.trainer"):
        trainer = BradleyTerryRewardTrainer(model=model, args=fp32_args(tmp_path), peft_config=lora,
                                            processing_class=load_tokenizer(tiny_llama_dir),
                                            train_dataset=Dataset.from_list(preference_rows(1)))
    assert trainer.model.get_base_model().model.extra_dropout.p == 0
    assert {m.p for n, m in trainer.model.named_modules() if ".lora_dropout." in n and isinstance(m, torch.nn.Dropout)} == {0.1}
    assert any("bt-peft data: " in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("flag", [None, False, "false", "None", "FALSE"])
def test_resume_flags_meaning_no_start_afresh(qlora, tmp_path, flag):
    trainer = make_trainer(qlora, tmp_path, max_steps=1)
    trainer.train(resume_from_checkpoint=flag)
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("flag", [True, "true", "True"])
def test_resume_flags_meaning_yes_need_a_complete_checkpoint(qlora, tmp_path, flag):
    trainer = make_trainer(qlora, tmp_path, max_steps=1)
    with pytest.raises(ValueError, match="no complete checkpoint to resume from in"):
        trainer.train(resume_from_checkpoint=flag)


CONVERSATION = [{"role": "user", "content": "can you help me?"}]
FORMATS = {
    "standard implicit": {"chosen": "Human: hi Assistant: Sure, happy to help.", "rejected": "Human: hi Assistant: No."},
    "standard explicit": {"prompt": "Human: hi Assistant:", "chosen": " Sure.", "rejected": " No."},
    "conversational implicit": {"chosen": CONVERSATION + [{"role": "assistant", "content": "Sure."}],
                                "rejected": CONVERSATION + [{"role": "assistant", "content": "No."}]},
    "conversational explicit": {"prompt": CONVERSATION, "chosen": [{"role": "assistant", "content": "Sure."}],
                                "rejected": [{"role": "assistant", "content": "No."}]},
    "pre-tokenized": {"chosen_ids": [0, 5, 6, 7], "rejected_ids": [0, 5, 6, 8]},
    "raw HH-RLHF": {"chosen": "\n\nHuman: hi\n\nAssistant: Sure, happy to help.", "rejected": "\n\nHuman: hi\n\nAssistant: No."},
}


@pytest.mark.parametrize("form", FORMATS)
def test_accepts_trl_dataset_formats_and_hh_text(qlora, tmp_path, form):
    trainer = make_trainer(qlora, tmp_path, rows=[FORMATS[form]] * 4, max_steps=1)
    assert trainer.preparation_reports["train"].kept == 4
    trainer.train()
    assert trainer.state.global_step == 1


def test_long_pairs_are_truncated_not_dropped(qlora, tmp_path, hh_dir):
    rows = Dataset.from_json(str(hh_dir / "dev.jsonl")).select(range(8)).to_list()
    trainer = make_trainer(qlora, tmp_path, rows=rows, max_length=48, max_steps=1)
    report = trainer.preparation_reports["train"]
    assert report.kept == 8 and report.truncated > 0
    assert max(len(ids) for ids in trainer.train_dataset["chosen_ids"]) == 48


def test_saved_adapter_reloads_with_peft_and_gives_the_same_rewards(qlora, tmp_path, tiny_llama_dir):
    trainer = make_trainer(qlora, tmp_path, max_steps=3)
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    names = {path.name for path in (tmp_path / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= names
    reloaded = PeftModel.from_pretrained(load_reward_model(tiny_llama_dir, NF4, dtype=torch.float32), tmp_path / "adapter")
    reloaded.config.pad_token_id = trainer.processing_class.pad_token_id
    batch = DataCollatorForPreference(trainer.processing_class.pad_token_id)([trainer.train_dataset[i] for i in range(4)])
    trainer.model.eval()
    reloaded.eval()
    with torch.no_grad():
        expected = bt_reward(trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)
        actual = bt_reward(reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)
    assert torch.allclose(actual, expected, atol=1e-6)


def test_a_tokenizer_padding_with_eos_gets_a_distinct_pad_token(qlora, tmp_path):
    model, tokenizer = qlora
    tokenizer.pad_token = tokenizer.eos_token
    trainer = BradleyTerryRewardTrainer(model=model, args=fp32_args(tmp_path), processing_class=tokenizer,
                                        train_dataset=Dataset.from_list(preference_rows()))
    assert trainer.processing_class.pad_token == "<|endoftext|>"
    assert trainer.model.config.pad_token_id == trainer.processing_class.pad_token_id != tokenizer.eos_token_id


def test_unused_logit_stays_zero_through_training(trained):
    trainer, _ = trained
    head = trainer.model.get_base_model().score.modules_to_save["default"].weight
    assert not head[0].any(), "row 0 starts at zero and the Bradley-Terry loss never reaches it"
    assert head[1].abs().sum() > 0, "row 1, the reward, is trained"


def test_lora_dropout_keeps_its_configured_rate_under_trls_disable_dropout(tiny_llama_dir, tmp_path):
    """Defect 6: TRL's `disable_dropout=True` (default) zeroed LoRA's dropout too, while configs and card said 0.05."""
    model, tokenizer = load_qlora_model(tiny_llama_dir, compute_dtype=torch.float32, lora_dropout=0.3)
    trainer = BradleyTerryRewardTrainer(model=model, args=fp32_args(tmp_path), processing_class=tokenizer,
                                        train_dataset=Dataset.from_list(preference_rows(1)))
    assert trainer.args.disable_dropout
    rates = {module.p for name, module in trainer.model.named_modules()
             if isinstance(module, torch.nn.Dropout) and ".lora_dropout." in name}
    assert rates == {0.3}
    trainer.model.train()
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():  # LoRA's B and the head start at zero
            if "lora_B" in name or "modules_to_save" in name:
                torch.nn.init.normal_(param)
        batch = torch.tensor([[0, 5, 9, 17, 23, 1]])
        assert not torch.equal(trainer.model(input_ids=batch).logits, trainer.model(input_ids=batch).logits)


@pytest.mark.parametrize("name, value", [("pad_token", "</s>"), ("eos_token", "<s>"), ("dataset_num_proc", 4)])
def test_trl_settings_the_trainer_replaces_are_refused_by_name(qlora, tmp_path, name, value):
    with pytest.raises(ValueError, match=f"does not use: {name}="):
        make_trainer(qlora, tmp_path, **{name: value})
