"""Text-conditional generation: the demo's reports, report text, the conditioned UNet, its
pipeline and the metrics of its evaluation."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from cxr_pipeline.data.demo import phantom, reports
from cxr_pipeline.data.labels.metadata import LabelOptions, build_metadata
from cxr_pipeline.data.labels.report_text import finding_mentions, prompt_from_report, report_prompt
from cxr_pipeline.data.labels.sources import conform, read_indiana_xml, read_nih
from cxr_pipeline.evaluation.text_measures import PromptSet, negation_table, retrieval_baseline
from cxr_pipeline.metrics.distribution import nearest_distances, precision_recall_density_coverage
from cxr_pipeline.models.diffusion import (
    Conditioning,
    ScheduleConfig,
    TextCondition,
    UNetConfig,
    guided_prediction,
    predict,
)
from cxr_pipeline.models.model_folder import DiffusionModel, save_model, warm_start
from cxr_pipeline.models.model_settings import ClassDDPMSettings, TextLDMSettings
from cxr_pipeline.models.pipelines import TextConditionalGenerator
from cxr_pipeline.models.report_encoder import ReportEncoder
from tests.helpers.folders import untrained

WORDS = [
    "no",
    "pneumothorax",
    "or",
    "pleural",
    "effusion",
    "small",
    "moderate",
    "large",
    "right",
    "left",
    "heart",
    "size",
    "is",
    "normal",
    "the",
    "lungs",
    "are",
    "clear",
    "mild",
    "cardiomegaly",
    ".",
    ",",
    "consolidation",
    "atelectasis",
]


def tiny_encoder(folder: Path) -> ReportEncoder:
    """A stand-in for a configured checkpoint: a WordPiece vocabulary and a one-layer BERT."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS)]))
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=5 + len(set(WORDS)),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(str(folder))
    return ReportEncoder.from_pretrained(folder)


def tiny_unet(hidden: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return UNetConfig(8, 4, 4, (16, 32), 1, True, None, 8, cross_attention_dim=hidden, attention_head_dim=8).build()


# --- The demo's reports -------------------------------------------------------------------------------


def test_demo_reports_state_what_was_drawn_and_read_back_as_openi(small_demo):
    """Every NIH-layout study has an OpenI report whose MeSH terms give its NIH labels back, whose
    text asserts each drawn finding (with its side where it has one) and denies nothing it shows;
    normal studies get reports that assert nothing."""
    nih = read_nih(small_demo / "nih" / "Data_Entry_2017.csv").table
    nih = nih.set_index(nih["match_key"].str.rsplit(".", n=1).str[0])  # by file stem
    xml = sorted((small_demo / "openi" / "ecgen-radiology").glob("*.xml"))
    openi = read_indiana_xml(xml).table
    assert len(xml) == len(nih) and not read_indiana_xml(xml).problems
    # parentImage is the image's file stem: every report finds its image
    assert set(openi["match_key"]) == set(nih.index)
    labels = [
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Pneumonia",
        "Pneumothorax",
        "Nodule",
        "Mass",
        "Infiltration",
        "No_Finding",
    ]
    for row in openi.itertuples(index=False):
        expected = nih.loc[row.match_key]
        assert [getattr(row, label) for label in labels] == [expected[label] for label in labels], row.match_key
        text = report_prompt(row.findings_text, row.impression_text)
        mentions = finding_mentions(text)
        stated = {name for name, kind in mentions.items() if kind == "positive"}
        shown = {label for label in labels[:-1] if expected[label] == 1.0}
        assert stated == shown, (text, shown)


def test_reports_describe_side_size_and_vary_their_wording():
    rng = np.random.default_rng(0)
    drawn = [phantom.DrawnFinding("Effusion", side="right", zone="lower", severity="moderate")]
    texts = {reports.write_report(drawn, view="PA", age=60, sex="F", rng=rng).findings for _ in range(40)}
    assert len(texts) >= 10  # phrasing varies: a model has to read
    assert all("moderate" in t.lower() and "right" in t.lower() for t in texts)
    assert all(finding_mentions(t)["Effusion"] == "positive" for t in texts)  # asserted, never denied
    nodule = [phantom.DrawnFinding("Nodule", side="left", zone="upper", size_mm=14.0)]
    text = reports.write_report(nodule, view="AP", age=60, sex="M", rng=rng)
    assert "14 mm" in text.findings and "left" in text.findings and text.mesh == ("Lung Nodule/left",)


def test_phantom_records_what_it_draws_without_changing_the_image():
    rng = np.random.default_rng(3)
    traits = phantom.sample_patient(rng, seed=3)
    study = phantom.sample_study(rng, ("Effusion", "Pneumothorax"), seed=0)
    drawn: list[phantom.DrawnFinding] = []
    image = phantom.render(traits, study, 64, drawn)
    np.testing.assert_array_equal(image, phantom.render(traits, study, 64))
    assert {d.name for d in drawn} == {"Effusion", "Pneumothorax"}
    pneumothorax = next(d for d in drawn if d.name == "Pneumothorax")
    assert pneumothorax.side == ("right" if study.finding_side["Pneumothorax"] < 0 else "left")
    assert pneumothorax.severity in ("small", "moderate", "large")


def test_report_text_comes_from_the_report_source_while_labels_stay_with_the_curated_one(small_demo):
    nih = read_nih(small_demo / "nih" / "Data_Entry_2017.csv")
    openi = read_indiana_xml(sorted((small_demo / "openi" / "ecgen-radiology").glob("*.xml")))
    names = nih.table["match_key"].head(5).tolist()
    manifest = pd.DataFrame(
        {
            "image_id": [f"id{i}" for i in range(5)],
            "source_path": [f"nih/images/{n}" for n in names],
            "shard": 0,
            "shard_index": range(5),
            "pixel_hash": [f"h{i}" for i in range(5)],
            "format": "png",
        }
    )
    labels = conform(pd.concat([nih.table, openi.table], ignore_index=True))
    result = build_metadata(manifest, labels, LabelOptions())
    assert (result.metadata["label_source"] == "nih").all()
    assert result.metadata["findings_text"].notna().all() and result.metadata["impression_text"].notna().all()
    assert result.conflicts == 0  # the reports agree with the NIH labels
    first = openi.table["match_key"] == names[0].rsplit(".", 1)[0]
    flipped = openi.table.assign(Hernia=openi.table["Hernia"].where(~first, 1.0))
    result = build_metadata(manifest, conform(pd.concat([nih.table, flipped], ignore_index=True)), LabelOptions())
    assert result.conflicts == 1 and (result.metadata["label_source"] == "nih").all()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("No pneumothorax or pleural effusion.", {"Pneumothorax": "negated", "Effusion": "negated"}),
        ("Small right pleural effusion. No pneumothorax.", {"Effusion": "positive", "Pneumothorax": "negated"}),
        ("The heart is mildly enlarged. Lungs are clear.", {"Cardiomegaly": "positive"}),
        (
            "No focal consolidation. Plate-like atelectasis at the left lung base.",
            {"Pneumonia": "negated", "Atelectasis": "positive"},
        ),
        ("No effusion but a small left pneumothorax.", {"Effusion": "negated", "Pneumothorax": "positive"}),
        ("Massive heart. 2 cm mass in the right upper lung.", {"Mass": "positive"}),
        ("Normal chest x-XXXX.", {}),
    ],
)
def test_finding_mentions_tell_assertion_from_negation(text, expected):
    assert finding_mentions(text) == expected


# --- The conditioned UNet and its pipeline --------------------------------------------------------------


def test_cross_attention_reads_the_report_and_the_mask_hides_padding(tmp_path):
    encoder = tiny_encoder(tmp_path / "encoder")
    unet = tiny_unet().eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 500])
    with torch.no_grad():
        text = encoder.encode(["Large right pneumothorax.", "No pneumothorax or pleural effusion."])
        out = predict(unet, x, t, text=text)
        assert not torch.allclose(
            out[0], predict(unet, x[1:], t[1:], text=TextCondition(text.hidden[1:], text.mask[1:]))[0]
        )
        # padding the same report further changes nothing: cross-attention and pooling read the mask
        short, long = (
            encoder.encode(["Small left pneumothorax."]),
            encoder.encode(["Small left pneumothorax."], pad_to=30),
        )
        assert long.hidden.shape[1] == 30 > short.hidden.shape[1]
        torch.testing.assert_close(
            predict(unet, x[:1], t[:1], text=short), predict(unet, x[:1], t[:1], text=long), atol=1e-5, rtol=1e-4
        )


def test_a_warm_start_takes_every_fitting_weight_of_the_class_model_and_leaves_the_condition_fresh(tmp_path):
    class_config = UNetConfig(8, 4, 4, (16, 32), 1, True, 3, 8)
    torch.manual_seed(1)
    class_unet = class_config.build()
    save_model(
        tmp_path / "class",
        class_unet,
        untrained(
            "class_ddpm",
            class_config,
            ScheduleConfig(),
            Conditioning(num_classes=2),
            ClassDDPMSettings(classes=["a", "b"], class_balance=True, guidance_scale=3.0, space="pixel"),
        ),
    )
    text_unet, fresh = tiny_unet(), tiny_unet().state_dict()
    copied = warm_start(text_unet, tmp_path / "class")
    saved, now = class_unet.state_dict(), text_unet.state_dict()
    assert {
        "conv_in.weight",
        "conv_out.weight",
        "time_embedding.linear_1.weight",
        "down_blocks.0.resnets.0.conv1.weight",
        "mid_block.resnets.1.conv2.weight",
    } <= set(copied)
    for name in copied:
        torch.testing.assert_close(now[name], saved[name], rtol=0, atol=0)
    # the class embedding table and cross-attention have no counterpart: they keep their initialization
    untouched = [name for name in now if name.startswith("class_embedding") or ".attn2." in name]
    assert untouched and not set(untouched) & set(copied)
    for name in untouched:
        torch.testing.assert_close(now[name], fresh[name], rtol=0, atol=0)
    with pytest.raises(ValueError, match="no weight"):
        warm_start(UNetConfig(8, 2, 2, (24, 48), 1, True, None, 8, cross_attention_dim=32).build(), tmp_path / "class")


def test_guidance_zero_and_one_are_the_unconditional_and_conditional_models(tmp_path):
    encoder = tiny_encoder(tmp_path / "encoder")
    unet = tiny_unet().eval()
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([100, 400, 900])
    both = encoder.encode(["Moderate left pleural effusion.", "Mild cardiomegaly.", "The lungs are clear.", ""])
    text, null = TextCondition(both.hidden[:3], both.mask[:3]), TextCondition(both.hidden[3:], both.mask[3:])
    assert null.mask.sum() == 2  # the empty report: [CLS] [SEP], the null condition
    with torch.no_grad():
        conditional, unconditional = predict(unet, x, t, text=text), predict(unet, x, t, text=null.repeat(3))
        torch.testing.assert_close(guided_prediction(unet, x, t, None, None, 1.0, text, null), conditional)
        torch.testing.assert_close(guided_prediction(unet, x, t, None, None, 0.0, text, null), unconditional)
        guided = guided_prediction(unet, x, t, None, None, 3.0, text, null)
        torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional), atol=1e-5, rtol=1e-4)


def test_training_step_swaps_in_the_empty_report_at_the_dropout_rate(tmp_path):
    from cxr_pipeline.models.diffusion import diffusion_step

    encoder = tiny_encoder(tmp_path / "encoder")
    text = encoder.encode(["Large right pneumothorax."] * 4, pad_to=12)
    null = encoder.encode([""], pad_to=12)
    batch = {
        "target": torch.randn(4, 4, 8, 8),
        "text": text.hidden,
        "text_mask": text.mask,
        "null_text": null.hidden,
        "null_mask": null.mask,
    }
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = tiny_unet()

        def forward(self, *args, **kwargs):
            seen.append(kwargs["encoder_attention_mask"].sum(1).tolist())
            return self.unet(*args, **kwargs)

    schedule = ScheduleConfig(prediction_type="v_prediction", snr_gamma=5.0)
    for dropout, expected in ((0.0, 4 * [text.mask[0].sum().item()]), (1.0, [2, 2, 2, 2])):
        seen.clear()
        loss, _ = diffusion_step(Conditioning(text=True, text_dropout=dropout), schedule)(
            Spy(), batch, torch.Generator().manual_seed(0)
        )
        assert torch.isfinite(loss) and seen == [expected]


def test_pipeline_saves_and_loads_its_encoder_and_samples_the_same(tmp_path):
    encoder = tiny_encoder(tmp_path / "encoder")
    config = UNetConfig(8, 4, 4, (16, 32), 1, True, None, 8, cross_attention_dim=32)
    torch.manual_seed(0)
    model = DiffusionModel(
        config.build().eval(),
        untrained(
            "text_ldm",
            config,
            ScheduleConfig(100, prediction_type="v_prediction"),
            Conditioning(text=True, text_dropout=0.1),
            TextLDMSettings(
                guidance_scale=2.0,
                text_dropout=0.1,
                balance=True,
                trainable_encoder_layers=0,
                vae_source="vae",
                encoder_source="encoder",
                text_length=16,
                train_reports=0,
            ),
        ),
    )
    pipeline = TextConditionalGenerator(model, text_encoder=encoder)
    prompts = ["Small right pneumothorax.", "The lungs are clear."]
    first = pipeline(prompts, num_inference_steps=3, generator=1)
    assert first.shape == (2, 4, 8, 8)  # no VAE in this folder: the UNet's own output
    pipeline.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "text_encoder" / "config.json").exists()
    loaded = TextConditionalGenerator.from_pretrained(tmp_path / "model", "cpu")
    torch.testing.assert_close(loaded(prompts, num_inference_steps=3, generator=1), first)
    assert not torch.allclose(loaded(prompts, num_inference_steps=3, generator=1, guidance_scale=0.0), first)
    # a report typed with section headers is read as the training prompts were made (no headers)
    headed = ["FINDINGS: Small right pneumothorax. IMPRESSION: Pneumothorax.", "Findings: The lungs are clear."]
    torch.testing.assert_close(
        loaded(headed, num_inference_steps=3, generator=1),
        loaded(["Small right pneumothorax. Pneumothorax.", "The lungs are clear."], num_inference_steps=3, generator=1),
    )


@pytest.mark.parametrize(
    "typed, prompt",
    [
        (
            "FINDINGS: Moderate right effusion. The left lung is clear. IMPRESSION: Right effusion.",
            "Moderate right effusion. The left lung is clear. Right effusion.",
        ),
        (
            "EXAMINATION: CHEST PA.\nINDICATION: cough.\nFINDINGS:\n  Lungs clear; NG tube: tip in stomach.\n\n"
            "IMPRESSION: No acute process.\nRECOMMENDATION(S): none",
            "Lungs clear; NG tube: tip in stomach. No acute process.",
        ),
        ("Impression: small left pneumothorax.", "small left pneumothorax."),
        ("No acute cardiopulmonary process.", "No acute cardiopulmonary process."),  # no headers: as typed
    ],
)
def test_a_typed_report_becomes_the_prompt_the_model_was_trained_on(typed, prompt):
    assert prompt_from_report(typed) == prompt


# --- Evaluation metrics ------------------------------------------------------------------------------------


def test_precision_recall_density_coverage_on_known_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 4))
    same = precision_recall_density_coverage(real, real + 1e-9, k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0 and same["density"] >= 1.0
    far = precision_recall_density_coverage(real, real + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    collapsed = precision_recall_density_coverage(
        real, np.repeat(real[:1], 200, axis=0) + rng.normal(0, 1e-3, (200, 4))
    )
    assert collapsed["precision"] == 1.0 and collapsed["coverage"] < 0.1  # faithful but not diverse
    distances, nearest = nearest_distances(real[:3] + 1e-3, real)
    assert nearest.tolist() == [0, 1, 2] and (distances < 1e-2).all()


def test_negation_and_retrieval_on_constructed_reports():
    prompts = [
        "No pneumothorax or pleural effusion.",
        "Lungs are clear. No pneumothorax.",
        "Large right pleural effusion. No pneumothorax.",
        "Small left pneumothorax.",
    ]
    test = PromptSet(
        prompts,
        np.array([0, 0, 3, 5]),
        [{"No_Finding"}, {"No_Finding"}, {"Effusion"}, {"Pneumothorax"}],
        torch.zeros(4, 1, 8, 8),
        np.array(["a", "b", "c", "d"]),
        ["1", "2", "3", "4"],
    )
    names = ["No_Finding", "Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax"]
    table = negation_table(test, np.array([5, 0, 5, 5]), names, real_predicted=np.array([0, 0, 5, 5])).set_index(
        "finding"
    )
    # pneumothorax is denied in the first three reports and produced for two of them (1st, 3rd)
    assert table.loc["Pneumothorax", "denying reports"] == 3
    assert table.loc["Pneumothorax", "rate when denied"] == pytest.approx(2 / 3)
    assert table.loc["Pneumothorax", "rate for normal reports"] == pytest.approx(1 / 2)
    assert table.loc["Pneumothorax", "rate when denied beside another finding"] == 1.0
    # the classifier calls the real image of the third report (an effusion) a pneumothorax too
    assert table.loc["Pneumothorax", "rate on the real images of the denying reports"] == pytest.approx(1 / 3)
    assert retrieval_baseline(
        ["Small left pneumothorax.", "No acute disease."],
        ["Moderate left pneumothorax.", "No acute cardiopulmonary disease."],
    ).tolist() == [0, 1]


def test_trainable_encoder_layers_train_with_the_unet_and_are_saved_into_the_encoder(tmp_path):
    from cxr_pipeline.models.diffusion import diffusion_step
    from cxr_pipeline.models.diffusion_training import TextLayersAndUNet

    encoder = tiny_encoder(tmp_path / "encoder")
    prompts = ["Large right pneumothorax.", "The lungs are clear."]
    lower = encoder.encode(prompts, pad_to=10, layers=encoder.layer_count - 1)
    null = encoder.encode([""], pad_to=10, layers=encoder.layer_count - 1)
    model = TextLayersAndUNet(encoder.top_layers(1), tiny_unet())
    groups = model.parameter_groups(2e-3)
    assert groups[1]["lr"] == pytest.approx(1e-4)  # the pretrained layer adapts at a small share of the rate
    optimizer = torch.optim.AdamW(groups, lr=2e-3)
    batch = {
        "target": torch.randn(2, 4, 8, 8),
        "text": lower.hidden,
        "text_mask": lower.mask,
        "null_text": null.hidden,
        "null_mask": null.mask,
    }
    loss, _ = diffusion_step(Conditioning(text=True), ScheduleConfig(prediction_type="v_prediction"))(
        model, batch, torch.Generator().manual_seed(0)
    )
    loss.backward()
    optimizer.step()
    trained = encoder.with_top_layers(model.text_layers)
    before, after = encoder.encoder.state_dict(), trained.encoder.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("encoder.layer.0.") for name in changed)  # only the (last) trained layer
    # what the UNet saw in training is what the saved encoder gives at sampling time
    model.eval()  # (dropout off, as in the saved EMA copy)
    with torch.no_grad():
        seen = TextCondition(ReportEncoder.run_layers(model.text_layers, lower.hidden, lower.mask), lower.mask)
    torch.testing.assert_close(trained.encode(prompts, pad_to=10).hidden, seen.hidden, atol=1e-5, rtol=1e-4)


def test_contrastive_alignment_trains_and_saves_a_loadable_encoder(tmp_path):
    from cxr_pipeline.models.report_encoder import align_report_encoder
    from cxr_pipeline.models.training import TrainConfig

    encoder = tiny_encoder(tmp_path / "encoder")
    texts = [
        "Large right pneumothorax.",
        "The lungs are clear.",
        "Mild cardiomegaly.",
        "Small left pleural effusion.",
    ] * 4
    latents = torch.randn(4, 4, 8, 8).repeat(4, 1, 1, 1)  # each report paired with its own image
    config = TrainConfig(
        steps=30, batch_size=4, learning_rate=3e-3, warmup_steps=2, ema_decay=0.5, eval_every=30, checkpoint_every=15
    )
    outcome = align_report_encoder(
        tmp_path / "encoder", texts, latents, texts[:8], latents[:8], config, tmp_path / "runs", "tiny", max_length=12
    )
    assert outcome.final_step == 30 and outcome.metrics["val_retrieval_top1"] > 0.4  # chance is 1/4
    aligned = ReportEncoder.from_pretrained(outcome.model_dir)
    assert not torch.allclose(aligned.encode(texts[:2]).hidden, encoder.encode(texts[:2]).hidden)
