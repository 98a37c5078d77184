"""Locale / ISO 639 codes to FLORES-200-style codes (`fra_Latn`, `zho_Hans`, `srp_Latn`).

Rules, in order (`to_flores`):
1. A code already in FLORES form (`xxx_Yyyy`) is returned as is.
2. English locales and variants (`en`, `en_GB`, `en@quot`, ...) give `eng_Latn`.
3. Script modifiers and tags override the default script: `sr@latin`/`sr@Latn` -> `srp_Latn`,
   `uz@cyrillic` -> `uzn_Cyrl`, `zh_Hant`, `zh_TW`, `zh_HK` -> `zho_Hant`.
4. Region-specific languages: `pa_PK` -> `pnb_Arab` (Western Punjabi), `az_IR` -> `azb_Arab`.
5. Other regions fold into the language (`pt_BR` -> `por_Latn`, `de_CH` -> `deu_Latn`), since
   FLORES-200 has one code per language/script for these.
6. Any other `@modifier` (`ca@valencia`, `sr@ije`) and unknown languages give None: the caller skips
   the catalogue with a counted reason instead of guessing a script.

Language choices follow FLORES-200 where it names a macro-language member: `ar` -> `arb_Arab`,
`fa` -> `pes_Arab`, `ms` -> `zsm_Latn`, `lv` -> `lvs_Latn`, `sw` -> `swh_Latn`, `ne` -> `npi_Deva`,
`mn` -> `khk_Cyrl`, `uz` -> `uzn_Latn`, `ps` -> `pbt_Arab`, `sq` -> `als_Latn`, `no`/`nb` -> `nob_Latn`.
"""

from __future__ import annotations

import re

# ISO 639-1/-3 (as used in locale names) -> FLORES-200-style code with the language's usual script.
_BASE = dict(
    pair.split("=")
    for pair in """
ab=abk_Cyrl ace=ace_Latn ach=ach_Latn af=afr_Latn ak=aka_Latn am=amh_Ethi an=arg_Latn ang=ang_Latn
ar=arb_Arab as=asm_Beng ast=ast_Latn ay=ayr_Latn az=azj_Latn ba=bak_Cyrl bar=bar_Latn be=bel_Cyrl
bg=bul_Cyrl bi=bis_Latn bn=ben_Beng bo=bod_Tibt br=bre_Latn bs=bos_Latn byn=byn_Ethi ca=cat_Latn
ce=che_Cyrl ch=cha_Latn chr=chr_Cher ckb=ckb_Arab crh=crh_Latn cs=ces_Latn csb=csb_Latn cv=chv_Cyrl
cy=cym_Latn da=dan_Latn de=deu_Latn dv=div_Thaa dz=dzo_Tibt ee=ewe_Latn el=ell_Grek en=eng_Latn
eo=epo_Latn es=spa_Latn et=est_Latn eu=eus_Latn fa=pes_Arab ff=fuv_Latn fi=fin_Latn fil=tgl_Latn
fo=fao_Latn fr=fra_Latn frp=frp_Latn fur=fur_Latn fy=fry_Latn ga=gle_Latn gd=gla_Latn gez=gez_Ethi
gl=glg_Latn gn=grn_Latn gu=guj_Gujr gv=glv_Latn ha=hau_Latn haw=haw_Latn he=heb_Hebr hi=hin_Deva
hr=hrv_Latn ht=hat_Latn hu=hun_Latn hy=hye_Armn ia=ina_Latn id=ind_Latn ie=ile_Latn ig=ibo_Latn
io=ido_Latn is=isl_Latn it=ita_Latn iu=iku_Cans ja=jpn_Jpan jam=jam_Latn jv=jav_Latn ka=kat_Geor
kab=kab_Latn ki=kik_Latn kk=kaz_Cyrl kl=kal_Latn km=khm_Khmr kmr=kmr_Latn kn=kan_Knda ko=kor_Hang
kok=kok_Deva ku=kmr_Latn kv=kpv_Cyrl kw=cor_Latn ky=kir_Cyrl lb=ltz_Latn lg=lug_Latn li=lim_Latn
ln=lin_Latn lo=lao_Laoo lt=lit_Latn lv=lvs_Latn mai=mai_Deva mg=plt_Latn mhr=mhr_Cyrl mi=mri_Latn
mk=mkd_Cyrl ml=mal_Mlym mn=khk_Cyrl mr=mar_Deva ms=zsm_Latn mt=mlt_Latn my=mya_Mymr na=nau_Latn
nah=nah_Latn nb=nob_Latn nds=nds_Latn ne=npi_Deva nl=nld_Latn nn=nno_Latn no=nob_Latn nso=nso_Latn
nv=nav_Latn ny=nya_Latn oc=oci_Latn or=ory_Orya pa=pan_Guru pap=pap_Latn pl=pol_Latn ps=pbt_Arab
pt=por_Latn qu=quy_Latn ro=ron_Latn rom=rom_Latn ru=rus_Cyrl rw=kin_Latn sa=san_Deva sc=srd_Latn
sd=snd_Arab si=sin_Sinh sk=slk_Latn sl=slv_Latn sm=smo_Latn sn=sna_Latn so=som_Latn son=son_Latn
sq=als_Latn sr=srp_Cyrl st=sot_Latn su=sun_Latn sv=swe_Latn sw=swh_Latn ta=tam_Taml te=tel_Telu
tg=tgk_Cyrl th=tha_Thai ti=tir_Ethi tig=tig_Ethi tk=tuk_Latn tl=tgl_Latn tn=tsn_Latn tr=tur_Latn
ts=tso_Latn tt=tat_Cyrl tzm=tzm_Tfng ug=uig_Arab uk=ukr_Cyrl ur=urd_Arab uz=uzn_Latn ve=ven_Latn
vi=vie_Latn wa=wln_Latn wal=wal_Ethi wo=wol_Latn xh=xho_Latn yi=ydd_Hebr yo=yor_Latn zh=zho_Hans
zu=zul_Latn
""".split()
)

# Locale modifiers (after `@`) and script subtags that name a script.
_SCRIPT_MODIFIERS = {"latin": "Latn", "latn": "Latn", "cyrillic": "Cyrl", "cyrl": "Cyrl", "iqtelif": "Latn"}
_SCRIPT_TAGS = {"Latn", "Cyrl", "Arab", "Hans", "Hant", "Deva", "Beng", "Guru"}
_REGION_CODES = {("pa", "PK"): "pnb_Arab", ("az", "IR"): "azb_Arab"}
_HANT_REGIONS = {"TW", "HK", "MO"}
_FLORES_RE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")
_LOCALE_RE = re.compile(r"^(?P<lang>[a-z]{2,3})(?:[_-](?P<sub>[A-Za-z]{2,4}))?(?:\.[\w-]+)?(?:@(?P<mod>\w+))?$")

ENGLISH = "eng_Latn"


def is_flores_code(code: str) -> bool:
    """True for `xxx_Yyyy` codes (three lowercase letters, underscore, a title-case script)."""
    return bool(_FLORES_RE.match(code))


def to_flores(locale: str) -> str | None:
    """Map a locale name (`fr`, `pt_BR`, `sr@latin`, `zh_TW.UTF-8`) to a FLORES code, or None if unknown."""
    if is_flores_code(locale):
        return locale
    m = _LOCALE_RE.match(locale)
    if not m or m["lang"] not in _BASE:
        return None
    lang, sub, mod = m["lang"], m["sub"] or "", (m["mod"] or "").lower()
    base = _BASE[lang]
    if lang == "en":
        return ENGLISH  # en_GB, en@quot, en@shaw: English variants, the pivot side
    if (lang, sub) in _REGION_CODES:
        return _REGION_CODES[(lang, sub)]
    script = base.split("_")[1]
    if mod:
        if mod not in _SCRIPT_MODIFIERS:
            return None  # a dialect variant (ca@valencia, sr@ije): no FLORES code of its own
        script = _SCRIPT_MODIFIERS[mod]
    if sub.title() in _SCRIPT_TAGS and len(sub) == 4:
        script = sub.title()
    elif lang == "zh" and sub.upper() in _HANT_REGIONS:
        script = "Hant"
    return f"{base.split('_')[0]}_{script}"
