"""Bootstrap summaries: what an interval can and cannot say."""


def test_an_interval_over_too_few_patients_says_so_instead_of_looking_certain():
    from cxr_pipeline.metrics.statistics import summarize

    one = summarize([4.5, 4.7, 4.7], groups=["p1", "p1", "p1"], resamples=200)
    assert one.ci_low == one.ci_high == one.mean  # what the bootstrap gives: no spread at all
    assert one.units == 1 and one.degenerate
    assert one.text().endswith("(only 1 resampled: no real interval)")
    many = summarize(list(range(20)), groups=[f"p{i // 2}" for i in range(20)], resamples=200)
    assert many.units == 10 and not many.degenerate and "resampled" not in many.text()
    assert "units" not in one.as_dict()  # not a figure of the model
