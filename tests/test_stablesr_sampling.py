"""StableSR sampling: respaced DDPM schedule, start, seeding, CFG, tiling, and parity with the official code.

The ``OFFICIAL`` values at the bottom were recorded by running the official StableSR code
(IceClear/StableSR @ 398ee93: ``UNetModelDualcondV2``, ``EncoderUNetModelWT``, ``Decoder_Mix``,
and ``LatentDiffusionSRTextWT.sample``/``sample_canvas`` with the script's respacing) on the
seeded tiny weights of :mod:`addsr_core.stablesr.tiny`, exported to the official key layout.
Only strided samples of each output are kept.
"""
import pytest
import torch

from addsr_core.sampling.noise import SeededNoise
from addsr_core.sampling.tiling import tile_origins
from addsr_core.sampling.denoisers import TiledDenoiser
from addsr_core.stablesr import StableSRDenoiser, StableSRSampling, respaced_schedule, sample_stablesr, space_timesteps
from addsr_core.stablesr.sampling import ldm_alphas_cumprod
from addsr_core.stablesr.tiny import tiny_cfw, tiny_stablesr
from conftest import assert_matches

H, W = 24, 40


def _sub(x, c=2, sy=6, sx=9):
    return x[:, :c, ::sy, ::sx]


@pytest.fixture(scope="module")
def model():
    return tiny_stablesr(0)


def _official_inputs():
    g = torch.Generator().manual_seed(123)
    lr = torch.randn(2, 4, H, W, generator=g)
    z = torch.randn(2, 4, H, W, generator=g)
    ctx = torch.randn(2, 7, 16, generator=g)
    return lr, z, ctx


# --- schedule -------------------------------------------------------------------------------------


def test_respaced_timesteps_match_the_official_spacing():
    assert space_timesteps(1000, 4) == [0, 333, 666, 999]  # StableSR-Turbo
    ts = space_timesteps(1000, 200)
    assert len(ts) == 200 and ts[:4] == [0, 5, 10, 15] and ts[-1] == 999
    assert space_timesteps(1000, 1000) == list(range(1000))
    with pytest.raises(ValueError, match="between 1 and 1000"):
        space_timesteps(1000, 0)


@pytest.mark.parametrize("steps", [4, 200])
def test_respaced_schedule_keeps_the_original_noise_levels(steps):
    s = respaced_schedule(steps)
    base = torch.tensor(ldm_alphas_cumprod())
    for k, t in enumerate(s.timesteps):
        assert abs(s.sqrt_alphas_cumprod[k].item() ** 2 - base[t].item()) < 2e-6
    # the last step (t=0) returns the x0 prediction itself
    assert abs(s.posterior_mean_coef1[0].item() - 1) < 1e-6 and s.posterior_mean_coef2[0].item() == 0
    assert abs(s.start_signal - base[999].sqrt().item()) < 1e-7 and abs(s.start_noise - (1 - base[999]).sqrt().item()) < 1e-7


# --- sampler mechanics with stub networks ---------------------------------------------------------


def _stub(z, t, lr, ctx):
    return 0.1 * z + 0.01 * lr + ctx.mean(dim=(1, 2))[:, None, None, None] + t[:, None, None, None] * 1e-4


def _run(**kwargs):
    trace = {}
    g = torch.Generator().manual_seed(0)
    lr = kwargs.pop("lr", torch.randn(1, 4, 8, 8, generator=g))
    ctx = kwargs.pop("context", torch.randn(1, 3, 16, generator=g))
    z = sample_stablesr(lr_latent=lr, context=ctx, trace=lambda n, v: trace.__setitem__(n, v.clone()), **kwargs)
    return z, trace, lr


def test_start_is_the_lr_latent_noised_to_999_or_pure_noise():
    z, trace, lr = _run(denoise=_stub, options=StableSRSampling(steps=4), noise=SeededNoise(3))
    eps = torch.randn(lr.shape, generator=torch.Generator().manual_seed(3))
    s = respaced_schedule(4)
    assert torch.allclose(trace["x_T"], s.start_signal * lr + s.start_noise * eps)
    _, trace, _ = _run(denoise=_stub, options=StableSRSampling(steps=4, start="noise"), noise=SeededNoise(3))
    assert torch.equal(trace["x_T"], eps)


def test_steps_visit_original_timesteps_in_decreasing_order():
    seen = []
    _run(denoise=lambda z, t, lr, ctx: seen.append(t.tolist()) or torch.zeros_like(z), options=StableSRSampling.turbo())
    assert seen == [[999], [666], [333], [0]]


def test_seeded_and_reproducible():
    a, _, _ = _run(denoise=_stub, options=StableSRSampling(steps=5), noise=SeededNoise(1))
    b, _, _ = _run(denoise=_stub, options=StableSRSampling(steps=5), noise=SeededNoise(1))
    c, _, _ = _run(denoise=_stub, options=StableSRSampling(steps=5), noise=SeededNoise(2))
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3


def test_eps_and_v_give_the_same_x0_for_the_same_prediction():
    s = respaced_schedule(4)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    k = 2
    z = s.sqrt_alphas_cumprod[k] * x0 + s.sqrt_one_minus_alphas_cumprod[k] * eps
    v = s.sqrt_alphas_cumprod[k] * eps - s.sqrt_one_minus_alphas_cumprod[k] * x0
    from addsr_core.stablesr.sampling import predict_x0

    assert torch.allclose(predict_x0(s, k, z, eps, "epsilon"), x0, atol=1e-5)
    assert torch.allclose(predict_x0(s, k, z, v, "v_prediction"), x0, atol=1e-5)


def test_classifier_free_guidance_combines_both_predictions():
    g = torch.Generator().manual_seed(4)
    pos, neg = torch.randn(1, 3, 16, generator=g), torch.randn(1, 3, 16, generator=g)
    with pytest.raises(ValueError, match="negative_context"):
        _run(denoise=_stub, options=StableSRSampling(steps=2, guidance_scale=3.0), context=pos)
    _, trace, lr = _run(denoise=_stub, options=StableSRSampling(steps=2, guidance_scale=3.0), context=pos, negative_context=neg)
    z = trace["x_T"]
    t = torch.tensor([999])
    expected = _stub(z, t, lr, neg) + 3.0 * (_stub(z, t, lr, pos) - _stub(z, t, lr, neg))
    assert torch.allclose(trace["t999.model_out"], expected, atol=1e-6)


def test_bad_options_are_named():
    for options, match in [(StableSRSampling(steps=0), "steps"), (StableSRSampling(prediction_type="x0"), "prediction_type"),
                           (StableSRSampling(start="lr"), "start")]:
        with pytest.raises(ValueError, match=match):
            options.validate()


# --- tiling ---------------------------------------------------------------------------------------


def tiled_denoiser(denoise, tile, overlap):
    """The official canvas tiles (LatentTiling(rule="square")): the LR latent cropped with the latent."""
    return TiledDenoiser(denoise, tile, overlap, scale=1, square=True)


def test_one_tile_covering_the_latent_equals_untiled(model):
    lr, z, ctx = _official_inputs()
    den = StableSRDenoiser(model)
    t = torch.tensor([666])
    with torch.no_grad():
        square = den(z[:1, :, :, :H], t, lr[:1, :, :, :H], ctx[:1])
        assert torch.equal(tiled_denoiser(den, 64, 32)(z[:1, :, :, :H], t, lr[:1, :, :, :H], ctx[:1]), square)
        whole = den(z[:1], t, lr[:1], ctx[:1])
        assert torch.equal(tiled_denoiser(den, (H, W), 8)(z[:1], t, lr[:1], ctx[:1]), whole)


def test_each_tile_sees_its_own_lr_crop_in_the_official_order():
    calls = []

    def spy(z, t, lr, ctx):
        calls.append((z.clone(), lr.clone()))
        return z

    lr = torch.randn(1, 4, H, W)
    out = tiled_denoiser(spy, 16, 4)(3 * lr, torch.tensor([999]), lr, torch.zeros(1, 1, 16))
    assert len(calls) == len(tile_origins(H, W, 16, 4)) == 6
    for (z_tile, lr_tile), (y0, x0) in zip(calls, tile_origins(H, W, 16, 4)):
        assert torch.equal(lr_tile, lr[..., y0:y0 + 16, x0:x0 + 16]) and torch.equal(z_tile, 3 * lr_tile)
    assert torch.allclose(out, 3 * lr, atol=1e-5)  # identity tiles stitch back to the input


def test_tile_must_exceed_overlap():
    with pytest.raises(ValueError, match="larger than the overlap"):
        tiled_denoiser(_stub, 16, 16)


# --- parity with the official code ----------------------------------------------------------------


def _check(ours, key, **sub):
    expected = torch.tensor(OFFICIAL[key]) if not isinstance(key, tuple) else torch.tensor(OFFICIAL[key[0]][key[1]])
    assert_matches(_sub(ours, **sub), expected, name=str(key))


def test_encoder_and_unet_match_official(model):
    lr, z, ctx = _official_inputs()
    t = torch.tensor([999, 333])
    with torch.no_grad():
        features = model.struct_encoder(lr, t)
        assert list(features) == ["40", "20", "10", "5"] and sorted(features) == sorted(OFFICIAL["encoder"])
        for key, value in features.items():
            _check(value, ("encoder", key), c=2, sy=4, sx=4)
        _check(model.unet(z, t, ctx, struct_cond=features), "unet")


@pytest.mark.parametrize("key,prediction,tiled", [("turbo_canvas", "epsilon", True), ("v_whole", "v_prediction", False)])
def test_sampler_matches_official(model, key, prediction, tiled):
    """4 respaced steps from the LR latent noised to t=999; tiled = the official canvas sampler
    (16-latent tiles, overlap 4, the encoder re-run on every tile's LR crop)."""
    lr, _, ctx = _official_inputs()
    den = StableSRDenoiser(model)
    if tiled:
        den = tiled_denoiser(den, 16, 4)
    with torch.no_grad():
        z0 = sample_stablesr(denoise=den, lr_latent=lr[:1], context=ctx[:1], noise=SeededNoise(7),
                             options=StableSRSampling(steps=4, prediction_type=prediction))
    _check(z0, key)


def test_cfw_matches_official():
    cfw = tiny_cfw(0)
    g = torch.Generator().manual_seed(321)
    image = torch.rand(1, 3, 48, 80, generator=g) * 2 - 1
    latent = torch.randn(1, 4, 6, 10, generator=g)
    with torch.no_grad():
        moments, feats = cfw.encode_with_features(image)
        _check(moments, "cfw_moments", c=8, sy=2, sx=3)
        _check(cfw.decode(latent, feats, 0.5), "cfw_decode_w05", c=3, sy=8, sx=10)


OFFICIAL = {'cfw_decode_w05': [[[[0.02827939, 0.06345771, 0.04772565, 0.0236179, 0.06452522, 0.008483965, -0.007455892,
                       0.01629543],
                      [0.1248267, 0.06083044, 0.02877439, -0.06574426, -0.09906177, -0.134931, -0.04679017,
                       -0.07955275],
                      [0.108987, -0.01217144, -0.05650765, -0.08995347, -0.105235, -0.1124168, -0.1884688, -0.2214117],
                      [0.1083654, -0.03169266, -0.127821, -0.1772358, -0.2714902, -0.2279411, -0.07539131, -0.09474699],
                      [0.1115057, 0.01762218, -0.1457286, -0.3253288, -0.1764644, -0.2958681, -0.09953813, -0.09073041],
                      [0.1176972, 0.1094579, -0.03419268, -0.07475315, -0.04972627, -0.1014653, 0.01399962,
                       -0.1710507]],
                     [[-0.05070948, -0.02952226, -0.0263769, -0.01702785, 0.0175822, -0.003530435, -0.01492928,
                       -0.008099802],
                      [-0.1340855, -0.03268191, -0.1316454, -0.02991628, -0.05264113, 0.03806609, -0.0169438,
                       -0.05028205],
                      [-0.1637264, -0.01956446, -0.02953644, -0.0401546, -0.03401199, -0.09644807, 0.00833371,
                       0.009922521],
                      [-0.1648604, 0.008339703, 0.06518835, 0.02011088, -0.0215599, 0.001468975, -0.09809335,
                       -0.04959904],
                      [-0.1298575, -0.002124872, 0.05001284, 0.01130249, 0.04573155, 0.1864728, -0.04625158,
                       0.004121002],
                      [-0.09103231, -0.03654869, 0.01937675, 0.01377175, 0.04865101, -0.03118814, -0.009609018,
                       0.04084397]],
                     [[-0.1719257, -0.2210242, -0.2280434, -0.2210473, -0.2283076, -0.2302681, -0.2388595, -0.2222353],
                      [0.0364026, -0.08557445, -0.127145, -0.1796652, -0.2246751, -0.1625408, -0.1061559, -0.115725],
                      [-0.01030311, -0.08472597, -0.02242126, -0.1615196, -0.1105238, -0.1631175, -0.2021846,
                       -0.1905596],
                      [-0.03700941, -0.1118562, -0.03123569, -0.06676135, -0.008624332, 0.00655007, -0.1938923,
                       -0.08481337],
                      [-0.003492258, -0.07992285, -0.09478816, -0.0293598, -0.08681314, -0.02076346, -0.1999383,
                       -0.1819964],
                      [0.007119726, -0.1191188, -0.08425499, -0.126099, -0.1226545, 0.004641208, -0.1195494,
                       -0.0312013]]]],
 'cfw_moments': [[[[-0.1024099, -0.1487863, -0.1455209, -0.08246827],
                   [-0.1124616, -0.08594522, -0.1042238, -0.04039171],
                   [-0.150009, -0.1107505, -0.113102, -0.07848427]],
                  [[-0.1291392, -0.1365157, -0.1203383, -0.05379531], [-0.1499055, -0.0478998, -0.1253382, -0.01172097],
                   [-0.125748, -0.1001755, -0.1485509, -0.04774265]],
                  [[0.05481395, 0.01166274, 0.03665892, 0.04642068], [0.05081873, 0.06424767, 0.09941363, 0.03751286],
                   [0.0141084, 0.0962252, 0.07209262, 0.06740247]],
                  [[0.01616295, -0.02913727, -0.01982406, -0.02000371],
                   [0.0172401, -0.01715561, 0.003153685, -0.01933982],
                   [-0.02388246, -0.01025835, 0.01614752, -0.03217593]],
                  [[0.1146788, 0.1436768, 0.1116115, 0.1189049], [0.1797022, 0.1116651, 0.1727626, 0.1061618],
                   [0.1592269, 0.1505117, 0.1480411, 0.1280923]],
                  [[0.03354754, 0.04561992, 0.06368419, 0.02491961], [0.0593932, 0.02763442, 0.04747632, 0.006499361],
                   [0.09272808, 0.0392468, 0.04349891, -0.002889819]],
                  [[0.01633743, -0.01863194, -0.02978719, 0.01549821],
                   [0.02010012, 0.006357165, 0.02807266, 0.01912626],
                   [-0.03904112, 0.02604564, 0.02858962, 0.02886355]],
                  [[0.07592843, 0.04727499, 0.007597075, 0.04387393], [0.08179462, 0.05422879, 0.0716108, 0.05120961],
                   [-0.005569233, 0.08287911, 0.07481092, 0.06127197]]]],
 'encoder': {'10': [[[[-3.853034, -5.65724, -4.292078], [-4.239216, -6.331464, -5.869205]],
                     [[-1.367763, 0.8829186, -0.4808492], [-3.705781, -0.7208847, -5.20652]]],
                    [[[-1.062678, -4.908083, -3.549579], [-4.499748, -6.32155, -5.047303]],
                     [[-0.6331694, 0.9211526, -0.1935969], [-3.941349, -1.67862, -1.24024]]]],
             '20': [[[[0.7002655, -1.245997, -0.3845928, -1.555742, -0.6760287],
                      [0.5285025, 1.051165, -1.14284, -2.364878, -0.03011556],
                      [-1.01697, 1.938115, -0.2973801, 0.4182786, 0.5090638]],
                     [[1.096237, 1.034417, 1.734979, 1.446426, 0.8839706],
                      [-1.133748, 0.9078156, -0.3226974, 0.8923122, -1.491714],
                      [1.264897, -1.415953, -0.9890175, 0.9769208, -1.90727]]],
                    [[[0.7972755, -0.1359747, -1.199542, -0.8558232, -1.318157],
                      [0.2097937, -0.9589335, 0.459892, -1.520248, 0.4571757],
                      [1.068247, -2.036215, -1.610914, 2.50358, 1.264663]],
                     [[0.8750536, -0.4856425, 0.4944135, 0.6523319, 2.030327],
                      [0.6636028, -1.226351, -0.3843578, 0.7805668, 1.296493],
                      [0.7095658, -0.2471204, 0.5226343, 1.688604, -1.614235]]]],
             '40': [[[[-0.01143545, 0.5982535, 0.346672, 0.4955202, 0.7336243, 0.3820381, 0.452431, 0.1155846,
                       0.4478931, 0.5448288],
                      [1.507591, -0.3478824, 0.7813267, 0.3104535, -0.9742524, 0.4221337, 0.04779737, 0.6592876,
                       -0.5162302, -0.3814943],
                      [-0.4546756, 1.404255, 0.0934796, 0.3426464, 0.8076122, 1.397659, 0.541297, 0.6294249, 1.121013,
                       1.130154],
                      [0.2601523, -0.1432827, 0.4299677, 0.5676653, 0.6981447, 0.5243391, -0.3877524, 0.672614,
                       0.6865386, 0.2771663],
                      [0.5950177, 0.2036296, 0.4363924, -0.1935924, 1.170009, 0.1114354, 0.06939718, 0.8461722,
                       0.6376348, 1.69623],
                      [0.4705891, 0.3941676, 0.7877661, 0.5071393, -0.6004864, 0.6313636, 1.003101, -0.2820239,
                       0.1646442, 0.6888778]],
                     [[-0.165775, 0.1457197, -0.6074492, -0.1123976, -0.1067839, -0.2129909, 0.06490251, 0.003674742,
                       -0.7814128, 0.4575549],
                      [-0.1301503, -1.220113, -0.4537721, -1.098824, -0.340528, -0.1496132, -0.1200016, -0.4183626,
                       -0.5479924, -0.853384],
                      [-0.2301677, -1.372679, 0.5174586, 0.2879702, -0.6675338, 0.2943631, -1.462697, -0.9424956,
                       0.1234506, -0.1287931],
                      [-0.6488576, -1.140876, -1.494443, -0.1574252, -0.009261005, -0.5676656, -0.9398399, -0.1260955,
                       -0.465078, -0.1360796],
                      [-0.5376841, 0.05593292, -0.03543983, -0.2639733, 0.01763076, 0.1849867, -0.9363781, -0.2640521,
                       0.6197205, -1.275887],
                      [0.3004391, 0.3087047, -0.3769566, 0.1375484, -1.171372, -0.1963698, -0.7287078, 0.02690126,
                       -0.9466301, 0.1351604]]],
                    [[[0.1579501, 0.7095456, 0.396169, 0.07002129, 0.693811, 0.04321024, -0.335315, 0.1844391, 0.060388,
                       0.4045309],
                      [-0.2225968, 0.4238505, 0.1904751, 0.5692557, 0.05571484, 1.206187, 1.819091, 0.1636168,
                       0.01304891, 0.1806999],
                      [0.9419832, -0.0896841, 0.1808345, -0.1505954, 0.5252548, 0.4089461, 0.3696769, -0.6588788,
                       0.4703628, -0.4425592],
                      [-0.1546516, 0.625764, 0.3911851, 0.1201022, 0.6899563, -0.4132807, 0.36069, 0.8205338, -0.423407,
                       0.01676494],
                      [0.8303501, 0.05782944, 1.221985, 0.9553497, -0.2275977, 0.3904944, 0.3074388, 0.001121074,
                       0.7667747, 0.411047],
                      [0.1364738, 0.3332598, 0.6297445, -0.3643448, 0.01115538, -0.2613278, 0.7455041, 0.460237,
                       0.9614609, 0.1988112]],
                     [[0.0205923, -0.5638425, 0.2098767, -1.131498, -0.5840716, 0.4427484, -0.967017, 0.3605846,
                       -0.36388, -0.2828132],
                      [0.01880789, -0.8359695, -0.5446647, -0.1554408, -0.4800426, 0.502558, -1.161289, -0.637826,
                       -1.042277, 0.5886217],
                      [0.7291791, -0.8709301, -0.2001807, 0.2022351, 0.01086431, 0.05192451, 0.4938406, 0.8987088,
                       0.1560879, 0.06365],
                      [0.6844999, -0.6014358, 0.8931357, 0.552484, -0.6258988, -0.4584093, -0.2741696, -0.5186786,
                       -0.3935979, -0.9570969],
                      [0.1260188, 0.2156823, 0.2395531, -0.1489139, -0.5753005, -0.267096, 0.2061659, 0.9048997,
                       -0.5536867, -0.8510101],
                      [0.2335353, -0.5737382, -0.1900974, -1.483827, 0.008080386, 0.4331785, -0.5704424, 0.5599453,
                       -0.2156198, -0.4285624]]]],
             '5': [[[[2.964283, 23.73747]], [[5.207964, 30.49617]]],
                   [[[10.43742, 3.460465]], [[2.994426, -11.17556]]]]},
 'turbo_canvas': [[[[-4.981113, -6.788755, 31.22097, -7.812675, 22.62164],
                    [-10.2672, -3.676268, -9.969756, 11.50491, 4.749924],
                    [-21.63306, 7.039109, 7.852701, -18.27403, -12.13793],
                    [12.45465, 34.97484, 6.685202, -6.433737, -24.36311]],
                   [[35.54303, -5.579217, 20.77258, 34.51783, -7.727594],
                    [-27.6592, 18.74828, -7.961439, -5.68984, 4.609243],
                    [-8.860372, 0.7397901, 15.69381, -13.6, 12.05998],
                    [15.81394, -10.83055, 7.410771, 11.72134, 11.97205]]]],
 'unet': [[[[-0.05587661, -0.08145097, -0.1438726, -0.107032, -0.1000562],
            [-0.07831042, -0.1186802, -0.05366829, -0.06195181, 0.06387144],
            [-0.1515054, -0.08825491, -0.1509278, -0.01878113, -0.01059688],
            [-0.1695043, -0.06518261, -0.04600773, 0.03186877, -0.08204824]],
           [[-0.1959093, -0.1452275, -0.1217558, -0.1600052, -0.103831],
            [-0.1283179, -0.05182476, -0.1972445, -0.2749176, -0.1864643],
            [-0.1970859, -0.2045271, -0.3342062, -0.1588555, -0.2140833],
            [-0.1690789, -0.1546868, -0.1849136, 0.05792409, -0.3032059]]],
          [[[-0.0119606, -0.05540583, -0.07205378, -0.09982184, -0.07614014],
            [-0.0647369, 0.0493418, -0.04897508, -0.2391483, -0.1182956],
            [-0.08132633, -0.1516262, -0.0479535, -0.05763973, 0.07691991],
            [-0.06170687, -0.1617873, -0.07767549, -0.1947502, 0.084557]],
           [[-0.2134932, -0.1600339, -0.1782219, -0.1952218, -0.1823155],
            [-0.1602556, -0.06186584, -0.3294469, -0.2555434, -0.1088648],
            [-0.222599, -0.08383422, -0.1329111, -0.2918068, -0.1397498],
            [-0.2068681, -0.06513108, -0.04785959, -0.256302, -0.1070432]]]],
 'v_whole': [[[[0.7684524, -0.09161194, 0.4015806, 0.06052057, 0.9876975],
               [-0.03486213, -0.459654, -0.1628742, 0.7307646, -0.5555626],
               [-0.01534012, 0.3890166, 0.1886935, 0.6966215, -0.6586264],
               [0.8515786, 0.6546499, -1.115978, 0.1972944, 0.302467]],
              [[1.281097, 0.05759443, 0.7401704, -0.08699861, -0.4017559],
               [0.3847537, 0.7861776, -0.05268767, 0.9211617, 0.2307402],
               [0.6804883, 0.7988849, 0.2913141, -1.341492, 0.3734932],
               [1.151508, 0.2578567, 0.818121, 0.4006312, -0.2905604]]]]}
