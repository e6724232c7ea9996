"""The interactive app over the champion models (``./run.sh app``): generate, restore, enhance,
browse the dataset, and read the registry. Layout only; the work is in ``services.py``.

Every caption says which image its figures describe: *raw* (the model's output, what every
evaluation metric is computed on) or *enhanced* (a display copy through a preset).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from cxr_pipeline import compute
from cxr_pipeline.app import dicom_export, registry, services, trust
from cxr_pipeline.data.labels.vocabulary import LABEL_COLUMNS
from cxr_pipeline.reports.enhancement import PRESETS, Enhancement

PAGES = ("Generate", "Restore", "Enhance", "Dataset", "Models")
EXAMPLE_REPORT = (
    "FINDINGS: Moderate right pleural effusion with blunting of the costophrenic angle. "
    "The left lung is clear. IMPRESSION: Right pleural effusion."
)


@st.cache_resource(show_spinner="Loading the model...")
def load_pipeline(key: str, folder: str, device: str):
    """Cached per model folder (a registered version's download), so a newly promoted champion is
    loaded fresh and an unchanged one is not loaded twice."""
    pipeline = registry.APP_MODELS[key].pipeline
    if pipeline is None:
        raise ValueError(f"{key} has no sampling pipeline")
    return pipeline.from_pretrained(folder, device)


def context() -> registry.AppContext:
    return registry.AppContext.from_environment()


def describe(image: np.ndarray, label: str) -> str:
    figures = services.image_metrics(image)
    return (
        f"{label} · {image.shape[1]}x{image.shape[0]} px · contrast {figures['contrast']:.3f} · "
        f"sharpness {figures['sharpness']:.4f} · entropy {figures['entropy']:.2f}"
    )


def show(image: np.ndarray, label: str, width: int = 256) -> None:
    st.image(np.clip(image, 0, 1), caption=describe(image, label), width=width, clamp=True)


def _latent_factor(pipeline) -> int:
    """Pixels per latent cell (the VAE's downsampling), 1 for a pixel-space model."""
    vae = pipeline.model.vae
    return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1


def show_check(check) -> None:
    """An input's out-of-distribution check (an image's or a report's): an error when it is out,
    a caption with the figures when it is not."""
    (st.error if check.out_of_distribution else st.caption)(check.message())


def preset_picker(key: str) -> Enhancement:
    name = str(
        st.selectbox(
            "Enhancement preset (display only)",
            list(PRESETS),
            index=list(PRESETS).index("balanced"),
            key=key,
            help="Applied to a copy for display. Metrics of model outputs use the raw image.",
        )
    )
    preset = PRESETS[name]
    if preset.steps():
        st.caption("Steps: " + "; ".join(f"{step} ({params})" for step, params in preset.steps()))
    return preset


def model_or_stop(key: str, ctx: registry.AppContext, alias: str, device: str):
    try:
        located = registry.locate(registry.APP_MODELS[key], ctx, alias)
    except registry.ModelUnavailable as missing:
        st.warning(str(missing))
        st.stop()
    return load_pipeline(key, str(located.folder), device), located


def model_caption(located: registry.LocatedModel) -> str:
    if not located.version:
        return f"{located.name}, logged by run {located.run_id} (not a registered version)"
    return f"{located.name} v{located.version}" + (f" ({located.alias})" if located.alias else "")


def progress_bar(label: str):
    bar = st.progress(0.0, text=label)

    def update(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"{label}: step {done} of {total}")

    return update


# --- Pages ---------------------------------------------------------------------------------------------------


def generate_page(ctx: registry.AppContext, alias: str, device: str) -> None:
    st.header("Generate radiographs")
    source = str(
        st.radio(
            "Condition on", ["a report (text model)", "a class (class model)"], horizontal=True, key="condition_on"
        )
    )
    key = "text" if source.startswith("a report") else "class"
    pipeline, located = model_or_stop(key, ctx, alias, device)
    st.caption(model_caption(located))
    st.info(trust.training_data(located.folder))
    if key == "text":
        prompt = st.text_area(
            "Report (findings and impression, as a radiologist writes them)", EXAMPLE_REPORT, key="prompt"
        )
        checked = trust.report_novelty(located.folder, prompt)
        st.session_state["report_novelty"] = checked
        if checked is not None:
            show_check(checked)
        conditions_of = lambda count: [prompt] * count
        condition_text = prompt
    else:
        names = pipeline.class_names
        chosen = st.selectbox("Class", names, key="class_name")
        conditions_of = lambda count: [names.index(chosen)] * count
        condition_text = chosen
    default_guidance = float(pipeline.settings.guidance_scale)
    left, middle, right = st.columns(3)
    guidance = left.slider("Prompt adherence (guidance scale)", 0.0, 10.0, default_guidance, 0.5, key="guidance")
    steps = middle.slider("DDIM steps", 5, 100, 20, 5, key="steps")
    seed = right.number_input("Seed", 0, 2**31 - 1, 0, key="seed")
    count = left.slider("Images", 1, 8, 2, key="count")
    native = pipeline.unet_config.sample_size * _latent_factor(pipeline)
    upscaler_alias = (
        "champion" if alias.startswith(registry.MODEL_URI_PREFIXES) else alias
    )  # a URI names this page's model
    zooms, why_not = trust.zoom_offered(ctx, upscaler_alias, native)
    resolution = (
        1.0
        if len(zooms) == 1
        else middle.select_slider(
            "Resolution",
            options=zooms,
            value=1.0,
            key="resolution",
            format_func=lambda s: (
                f"native ({native} px)" if s == 1 else f"x{s:g}, through the arbitrary-scale champion"
            ),
        )
    )
    if why_not:
        middle.caption(why_not)
    preset = preset_picker("generate_preset")
    if st.button("Generate", type="primary"):
        if key == "text" and not prompt.strip():
            st.error("Write a report first (an empty report samples the unconditional model; use guidance 0 for that).")
            st.stop()
        images = services.generate(
            pipeline,
            conditions_of(count),
            guidance=guidance,
            steps=steps,
            seed=int(seed),
            progress=progress_bar("Sampling"),
        )
        model_name = f"{located.name} v{located.version}"
        if resolution > 1:
            upscaler, sr_located = model_or_stop("arbitrary_sr", ctx, upscaler_alias, device)
            images = services.upscale(
                upscaler,
                images,
                resolution,
                steps=steps,
                seed=int(seed),
                progress=progress_bar(f"Super-resolving x{resolution:g}"),
            )
            model_name += f", then {sr_located.name} v{sr_located.version} x{resolution:g}"
        st.session_state["generated"] = {
            "images": images,
            "condition": condition_text,
            "model": model_name,
            "seed": int(seed),
            "guidance": guidance,
            "steps": steps,
        }
    result = st.session_state.get("generated")
    if not result:
        return
    for i, image in enumerate(result["images"]):
        enhanced = preset(image)
        raw_column, enhanced_column, files = st.columns([2, 2, 1])
        with raw_column:
            show(image, f"raw, seed {result['seed'] + i}")
        with enhanced_column:
            show(enhanced, f"enhanced ({preset.name})")
        generator = result["model"]
        files.download_button(
            "PNG (raw, 16-bit)", dicom_export.png_bytes(image), f"generated_{i}.png", "image/png", key=f"png_{i}"
        )
        files.download_button(
            "PNG (enhanced)",
            dicom_export.png_bytes(enhanced),
            f"generated_{i}_{preset.name}.png",
            "image/png",
            key=f"png_enhanced_{i}",
        )
        files.download_button(
            "DICOM (raw)",
            dicom_export.secondary_capture(
                image,
                generator=generator,
                condition=str(result["condition"]),
                seed=result["seed"] + i,
                guidance=result["guidance"],
                steps=result["steps"],
            ),
            f"generated_{i}.dcm",
            "application/dicom",
            key=f"dcm_{i}",
        )


def restore_page(ctx: registry.AppContext, alias: str, device: str) -> None:
    st.header("Restore an image")
    st.caption(
        "The upload goes through ingestion's own reader: the same DICOM LUT/VOI and MONOCHROME1 decisions, "
        f"the same resizing to {ctx.profile.image_size} px, and the same reasons when a file is refused."
    )
    upload = st.file_uploader("DICOM, PNG or JPEG", type=["dcm", "dicom", "png", "jpg", "jpeg"])
    if upload is None:
        st.info("Upload a radiograph to restore it.")
        return
    try:
        image, fields = services.read_upload(upload.getvalue(), upload.name, ctx.profile.image_size)
    except services.UploadRejected as rejected:
        st.error(f"This file was not accepted ({rejected.reason}): {rejected.message}")
        return
    resized = trust.resize_note(fields, ctx.profile.image_size)
    if resized:
        st.warning(resized)
    task = st.radio("Task", ["super-resolution", "denoising"], horizontal=True, key="task")
    pipeline, located = model_or_stop("arbitrary_sr" if task == "super-resolution" else "denoiser", ctx, alias, device)
    # what the model learnt from and whether this upload is like it, before any control
    st.caption(model_caption(located))
    st.info(trust.training_data(located.folder))
    novelty = trust.input_novelty(pipeline, located, image, ctx)
    st.session_state["novelty"] = novelty
    if novelty is None:
        st.caption(
            "This model version has no record of its training images' distribution: the upload cannot be "
            "checked against it."
        )
    else:
        show_check(novelty)
    if task == "super-resolution":  # an output above the model's size was never measured (trust.zoom_offered)
        simulate = True
        st.caption(
            "Super-resolution restores this image from a simulated low-resolution copy, back to the model's "
            f"{ctx.profile.image_size} px and scored against it: the arbitrary-scale model was evaluated only at "
            "output sizes up to its training images', and above them it paints texture at its native pixel period "
            "instead of enlarging the anatomy (docs/recipes.md, the app's zoom)."
        )
    else:
        simulate = st.checkbox(
            "Simulate the degradation from this image and score against it",
            value=True,
            help="Off: the upload is taken as the low-dose image itself.",
        )
    seeds = st.slider("Seeds (for the spread map)", 1, 5, 3, key="restore_seeds")
    steps = st.slider("DDIM steps", 5, 50, 20, 5, key="restore_steps")
    if task == "super-resolution":
        low, high = pipeline.scale_range
        scale = st.slider(
            "Scale",
            1.0,
            float(max(high, 4.0)),
            float(min(2.5, high)),
            0.1,
            help=f"The model was trained on scales {low:g} to {high:g}.",
            key="scale",
        )
    else:
        dose = st.selectbox("Dose (photons, I0)", pipeline.doses, index=0, key="dose")
        if simulate:  # the detector's noise is known: NLM on its variance-stabilised counts
            nlm_factor = st.slider("VST + non-local means h (unit noise)", 0.3, 1.6, 0.8, 0.1)
        else:
            nlm_factor = st.slider("Non-local means h / sigma", 0.4, 2.0, 1.0, 0.1)
    if st.button("Restore", type="primary"):
        update = progress_bar("Restoring")
        if task == "super-resolution":
            result = services.super_resolve_upload(
                pipeline, image, scale, simulate=simulate, seeds=seeds, steps=steps, progress=update
            )
        else:
            result = services.denoise_upload(
                pipeline,
                image,
                dose,
                simulate=simulate,
                seeds=seeds,
                steps=steps,
                nlm_factor=nlm_factor,
                vst_factor=nlm_factor,
                progress=update,
            )
        st.session_state["restored"] = result
    shown: services.Restoration | None = st.session_state.get("restored")
    if shown is None:
        return
    result = shown
    columns = iter(st.columns(3 + (result.spread is not None) + (result.reference is not None)))
    if result.reference is not None:  # simulated degradation: the image every score is against
        with next(columns):
            show(result.reference, "original (reference, raw)")
    with next(columns):
        show(result.input, "input (raw)")
    with next(columns):
        show(result.baseline, f"{result.baseline_name} (raw)")
    with next(columns):
        show(result.output, "diffusion (raw)")
    if result.spread is not None:
        with next(columns):
            spread = result.spread / max(float(result.spread.max()), 1e-6)
            st.image(
                spread,
                caption=f"spread over seeds (max {float(result.spread.max()):.3f}, scaled to white)",
                width=256,
                clamp=True,
            )
    if not result.scores.empty:
        st.subheader("Against the original (raw images)")
        st.dataframe(result.scores, hide_index=True)
    with st.expander("What the reader recorded"):
        st.json({k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in fields.items()})


def metadata_or_warn(ctx: registry.AppContext) -> pd.DataFrame | None:
    try:
        return services.metadata(ctx)
    except FileNotFoundError as missing:
        st.warning(str(missing))
        return None


def enhance_page(ctx: registry.AppContext) -> None:
    st.header("One image under every preset")
    rows = metadata_or_warn(ctx)
    if rows is None:
        return
    image_id = st.selectbox("Image", rows["image_id"].tolist()[:500])
    image = services.stored_image(ctx, rows.set_index("image_id").loc[image_id])
    raw = services.image_metrics(image)
    table = []
    columns = st.columns(len(PRESETS))
    for column, (name, preset) in zip(columns, PRESETS.items()):
        enhanced = preset(image)
        figures = services.image_metrics(enhanced)
        table.append({"preset": name, **figures, **{f"Δ {k}": round(figures[k] - raw[k], 4) for k in figures}})
        with column:
            st.image(enhanced, caption=describe(enhanced, "raw" if name == "none" else name), clamp=True)
    st.dataframe(pd.DataFrame(table), hide_index=True)
    with st.expander("Preset parameters"):
        st.dataframe(pd.DataFrame([p.as_dict() for p in PRESETS.values()]), hide_index=True)


def dataset_page(ctx: registry.AppContext) -> None:
    st.header("Dataset")
    rows = metadata_or_warn(ctx)
    if rows is None:
        return
    left, middle, right = st.columns(3)
    splits = left.multiselect("Split", sorted(rows["split"].dropna().unique()), key="splits")
    classes = middle.multiselect("Class", sorted(rows["class_name"].dropna().unique()))
    finding = right.selectbox("Finding", ["(any)", *LABEL_COLUMNS])
    text = st.text_input("Report contains", key="report_contains")
    chosen = services.filter_images(
        rows, splits=splits, classes=classes, finding=None if finding == "(any)" else finding, text=text
    )
    st.caption(f"{len(chosen)} of {len(rows)} images")
    st.dataframe(
        chosen[
            [
                "image_id",
                "patient_id",
                "split",
                "class_name",
                "view",
                "sex",
                "age_years",
                "label_source",
                "findings_text",
            ]
        ],
        hide_index=True,
    )
    samples = st.slider("Random samples", 1, 12, 4)
    if len(chosen):
        seed = st.number_input("Sample seed", 0, 10_000, 0)
        picked = chosen.sample(min(samples, len(chosen)), random_state=int(seed))
        for _, row in picked.iterrows():
            image_column, text_column = st.columns([1, 2])
            with image_column:
                show(services.stored_image(ctx, row), f"{row['image_id']} (raw)", width=192)
            with text_column:
                st.markdown(
                    f"**{row['class_name'] or 'several or no single-label class'}** · {row['split']} · "
                    f"patient {row['patient_id']}"
                )
                report = " ".join(
                    t for t in (row.get("findings_text"), row.get("impression_text")) if isinstance(t, str)
                )
                st.write(report or "(no report)")
    st.subheader("Rejected at ingestion")
    st.dataframe(services.rejected(ctx), hide_index=True)


def models_page(ctx: registry.AppContext) -> None:
    st.header("Models")
    overview = registry.registry_overview(ctx)
    if overview.empty:
        st.warning(f"No registered models in {ctx.tracking_uri}: run `./run.sh demo` (job `all_assets`).")
        return
    for model in registry.APP_MODELS.values():
        st.subheader(model.title)
        versions = overview[overview["model"] == model.registered_name]
        links = [
            f"[Dagster asset `{model.asset}`]({ctx.asset_url(model.asset)})",
            f"[evaluation `{model.evaluated_by}`]({ctx.asset_url(model.evaluated_by or '')})",
        ]
        if versions.empty:
            st.info(f"{model.registered_name} is not trained yet: materialize `{model.asset}`. " + " · ".join(links))
            continue
        champion = versions[versions["aliases"].str.contains("champion")]
        shown = champion.iloc[0] if len(champion) else versions.iloc[0]
        run_url = ctx.run_url(shown["run_id"])
        if run_url:
            links.append(f"[MLflow run]({run_url})")
        st.markdown(" · ".join(links))
        if shown["training_data"]:
            st.caption(shown["training_data"])
        st.dataframe(versions[["version", "aliases", "decision", "reason"]], hide_index=True)
        if shown["metrics"]:
            try:  # recorded headline first (the promotion metric and its baseline), then by name
                figures = json.loads(shown["metrics"])
                st.dataframe(pd.DataFrame([{"metric": k, "value": v} for k, v in figures.items()]), hide_index=True)
            except json.JSONDecodeError:
                st.caption(shown["metrics"])
        try:
            located = registry.locate(model, ctx, "champion" if len(champion) else "challenger")
            with st.expander(f"Architecture of v{located.version}"):
                st.json(registry.architecture(located.folder))
        except registry.ModelUnavailable as missing:
            st.caption(str(missing))
    st.subheader("Every registered version")
    st.dataframe(overview.drop(columns=["metrics", "training_data"]), hide_index=True)


def main() -> None:
    st.set_page_config(page_title="cxr-pipeline", layout="wide")
    compute.reuse_freed_memory()  # a process of its own, decoding full-size images on every click
    ctx = context()
    st.sidebar.title("cxr-pipeline")
    page = st.sidebar.radio("Mode", PAGES)
    alias = str(
        st.sidebar.radio(
            "Model version",
            ["champion", "challenger", "a model URI"],
            help="The champion passed its evaluation's promotion; the challenger is the latest "
            "evaluated version that did not (never the champion itself). A URI names any logged model: "
            "models:/cxr-class-ddpm/3, models:/cxr-class-ddpm@challenger, runs:/<run id>/model.",
        )
    )
    if alias == "a model URI":
        alias = st.sidebar.text_input("Model URI", placeholder="models:/cxr-class-ddpm/3").strip() or "champion"
    device = str(st.sidebar.selectbox("Device", ["auto", "cpu", "cuda"]))
    st.sidebar.caption(f"Work folder `{ctx.home}` · profile `{ctx.profile.name}` · MLflow `{ctx.tracking_uri}`")
    if page == "Generate":
        generate_page(ctx, alias, device)
    elif page == "Restore":
        restore_page(ctx, alias, device)
    elif page == "Enhance":
        enhance_page(ctx)
    elif page == "Dataset":
        dataset_page(ctx)
    else:
        models_page(ctx)


# Streamlit runs this file as ``__main__`` and leaves it there: a process spawned later (a
# multiprocessing worker) imports it as ``__mp_main__`` and must not start the app again.
if __name__ == "__main__":
    main()
