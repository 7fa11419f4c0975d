"""Caption tokenization, shared by the vocabulary and the metrics.

One tokenizer for both, so that the words the model learns are the words the
COCO evaluation counts. The reference is what pycocoevalcap does before scoring:
Stanford CoreNLP 3.4.1 ``PTBTokenizer -preserveLines -lowerCase`` (Java), then the
tokens in its PUNCTUATIONS list are dropped.

Why hand-written: nltk's Treebank tokenizer follows different rules (it splits a
period only at the end of the string, so "beach. a dog" gives "beach."; it keeps
"gonna" whole; it never turns "(" into "-LRB-"). Running the Java tokenizer needs
Java. So this module re-implements the part of CoreNLP's PTBLexer (a JFlex
scanner) that caption text exercises: the same token rules, tried in the same
order, with JFlex's longest-match semantics (a rule's trailing context counts
towards the match length; ties go to the earlier rule). The rules were checked
against the 3.4.1 jar itself, not against newer CoreNLP releases, which differ.

Quirks of the official pipeline that are reproduced on purpose:
- "(" -> "-LRB-" is lowercased to "-lrb-", which is *not* in PUNCTUATIONS, so
  brackets survive as the tokens "-lrb-", "-rrb-", "-lsb-", "-rsb-", "-lcb-", "-rcb-".
- Abbreviations, acronyms and single letters keep their period ("st.", "u.s.",
  "a." in "letter a."), except a one-letter acronym before a capitalised
  sentence opener ("I. The" -> "i").
- A word followed by a period and a letter stays one token ("dog.the"), a word
  followed by a period and , ; or : keeps the period ("dog.,").
- "cannot", "gonna", "wanna", "gotta", "lemme", "gimme", "'tis", "'twas" are split.
- Contractions split PTB style ("don't" -> "do", "n't"; "dog's" -> "dog", "'s").
- "1 1/2" and phone numbers are one token with a no-break space inside (as Java).

Known residual differences from the Java tokenizer (all rare in captions):
- The official tool tokenizes all captions as one text, one per line, so a rule's
  trailing context may look into the *next* caption. Here each caption is taken
  alone, followed by a newline. This only matters for a one-letter acronym at the
  very end of a caption followed by a caption that starts with "The", "A", ...
  ("... letter A." -> Java may give "a" where this gives "a.").
- Line breaks other than "\\n" (\\r, U+2028, ...) are treated as spaces here; in
  pycocoevalcap they split the caption into two lines and misalign all later ones.
- Exotic Unicode: letter/digit classes follow Python's Unicode tables rather than
  Java's; a character outside the BMP counts as one character here but as two
  UTF-16 surrogates in Java (both are dropped unless inside a URL-like token).
  URL, e-mail and SGML rules were probed, not copied, so odd ones may differ.

Checked against the jar (via pycocoevalcap): identical tokens for all 19,031 COCO
and Flickr8k captions in ../shared and for 75,000 generated strings full of
punctuation, quotes, abbreviations, numbers, URLs and Unicode (tests/test_metrics.py
keeps a few hundred of them).
"""
from __future__ import annotations

import re
from typing import Callable, NamedTuple

try:  # the regex parser, used only to index rules by first character
    from re import _constants as _C, _parser
except ImportError:  # Python 3.10
    import sre_constants as _C  # type: ignore[no-redef]
    import sre_parse as _parser  # type: ignore[no-redef]

_parse = _parser.parse

# Exactly pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Python's \w also covers characters that are numeric but not decimal ("\u00BD",
# "\u00B2"), which Java counts neither as letters nor digits; and JFlex 1.4 sees a
# character outside the BMP as two surrogates that match no letter/digit class.
_NOT_LETTER = (
    "".join(re.escape(c) for c in map(chr, range(0x80, 0x10000)) if c.isnumeric() and not c.isdecimal())
    + "\U00010000-\U0010FFFF"
)

# ---------------------------------------------------------------------------
# Character classes and macros (names follow PTBLexer.flex). JFlex's %caseless
# makes literal strings case-insensitive but not character classes, hence the
# (?i:...) around word lists only.
# ---------------------------------------------------------------------------
_LETTER = (
    rf"(?:[^\W\d_{_NOT_LETTER}]|[\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F"
    r"\u0370-\u037D\u0384\u0385\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525"
    r"\u055A-\u055F\u0591-\u05BD\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F"
    r"\u064B-\u065E\u0670\u06D6-\u06EF\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F"
    r"\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963"
    r"\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C"
    r"\u0A3E-\u0A4F\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8\u0BCA-\u0BCD"
    r"\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A\u0E47-\u0E4E\u0EB1-\u0EBC"
    r"\u0EC8-\u0ECD]|&[aeiouAEIOU](?i:acute|grave|uml);)"
)
_ALPHA = rf"[^\W\d_{_NOT_LETTER}]"  # JFlex [:letter:]
_DIGIT = r"[^\D\U00010000-\U0010FFFF]"
_ALNUM = rf"[^\W_{_NOT_LETTER}]"  # [:letter:] | [:digit:]
_FILECHAR = rf"(?:[^\W_{_NOT_LETTER}]|\u00AD)"
_SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
_NEWLINE = r"(?:\r\n|[\r\n\u2028\u2029\u000B\u000C\u0085])"
_SPACENL = rf"(?:{_SPACE}|{_NEWLINE})"
_SGML = (
    r"<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*"
    r"(?:[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\"|[A-Za-z][A-Za-z0-9_:.\-]*))?))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>"
)
_SENTEND = rf"{_SPACENL}(?:{_SPACENL}|[A-Z]|{_SGML})"
_APOS = r"(?:['\u0092\u2019]|(?i:&apos;))"
_APOSETC = r"(?:['`\u0092\u2019\u0091\u2018\u201B]|(?i:&apos;))"
_WORD = rf"{_LETTER}(?:{_LETTER}|{_DIGIT})*(?:[.!?]{_LETTER}(?:{_LETTER}|{_DIGIT})*)*"
_REDAUX = rf"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))"
_SWORD = r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"
_SREDAUX = rf"[nN]{_APOSETC}[tT]"
_NUM_SEPARATED = rf"{_DIGIT}*(?:[.:,\u00AD\u066B\u066C]{_DIGIT}+)+"
_HYPHEN = r"[\-_\u058A\u2010\u2011]"
_ACRO = r"(?:(?i:canada|sino|korean|eu|japan|non)-(?i:u\.s)|(?i:u\.s\.-(?:u\.k|u\.s\.s\.r))|[A-Za-z](?:\.[A-Za-z])*)"
_ACRO2 = r"(?:(?i:canada|sino|korean|eu|japan|non)-(?i:u\.s)|(?i:u\.s\.-(?:u\.k|u\.s\.s\.r))|[A-Za-z](?:\.[A-Za-z])+)"
_THING_PIECE = rf"(?:[dDoOlL]{_APOSETC}{_ALNUM})?{_ALNUM}+"
_THING = rf"{_THING_PIECE}(?:{_HYPHEN}{_THING_PIECE})*"
_THINGA = r"[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+"
_HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:{_ACRO2}\.|[A-Za-z0-9\u00AD]+))+"
_INSENTP = r"[,;:\u3001]"
_URL_PATH = r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},\-])?"
_QUOTES = [  # separate patterns: Python takes the first alternative that matches, JFlex the longest
    r"['\u0092\u2019]|(?i:&apos;)",
    "''",
    r"[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}",
]
_DBLQUOT = r"(?:\"|(?i:&quot;))"

# Abbreviation lists as the 3.4.1 jar behaves (probed word by word). Which list a
# word is in only decides whether an extra "." token follows; what matters after
# punctuation removal is that "word." stays one token.
_ABBREV1 = (
    r"(?:(?i:jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec|mon|tues?|wed|thu|thurs|fri"
    r"|ala|ariz|calif|colo|conn|ct|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev|okla|penn|tenn|va|vt|wisc?|wyo"
    r"|inc|cos?|corp|ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys|tel|est|ext|sq"
    r"|jr|sr|bros|ed\.d|ph\.d|blvd|rd|esq|etc|al|seq|bldg)"
    r"|A(?i:z|rk)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass|iss)|O(?i:re)|P(?i:a)|T(?i:ex)|W(?i:ash)"
    r"|(?i:pp?t)[ye](?i:s)?)\."
)
_ABBREV4 = (
    r"(?:" + _ACRO + r"|(?i:mrs?|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|capt|ste?"
    r"|ave|pres|lieut|rt|hon|brig|co?mdr|pfc|spc|supts?|det|mt|ft|adj|adv|asst|assoc|ens|insp|mlle|mme|msgr|sfc"
    r"|vs|alex|wm|jos|cie|a\.k\.a|cf|treas|ph|invt|elec|natl|dept)|M(?i:iss)|v|(?i:m)[ft](?i:g))"
)
_ABBREV3 = r"(?i:ca|figs?|prop|nos?|art|bldg|pp|op)\."
_ACRONYM_NEXT = (
    r"(?:A(?i:bout|ccording|dditionally|fter|n|s|t)?|B(?i:ut)|E(?i:arlier)|H(?i:e|er|ere|owever)|I(?i:f|n|t)"
    r"|L(?i:ast)|M(?i:any|ore|r\.|s\.)|N(?i:ow)|O(?i:nce|ne|ther|ur)|S(?i:he|ince|o|ome|uch)"
    r"|T(?i:hat|he|heir|hen|here|hese|hey|his)|W(?i:e|hen|hile|hat)|Y(?i:et|ou)|" + _SGML + ")"
)
_PHONE = (
    r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}"
    r"|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}"
)
_MISCSYMBOL = (
    r"[+%&~^|\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0\u05C3"
    r"\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D\u0703-\u070D\u07F6\u07F7"
    r"\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2025\u2030-\u2038\u203B\u203C\u2043\u203E-\u2042\u2044"
    r"\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3001-\u3006\u3008-\u3020\u30FB"
    r"\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]"
)


# ---------------------------------------------------------------------------
# Token normalisations done by the lexer's actions (ptb3Escaping defaults).
# ---------------------------------------------------------------------------
def _latex_quotes(tok: str, probably_left: bool) -> str:
    if probably_left:
        tok = re.sub(r"&apos;|'", "`", tok)
        tok = re.sub(r"\"|&quot;", "``", tok)
    else:
        tok = re.sub(r"&apos;|'", "'", tok)
        tok = re.sub(r"\"|&quot;", "''", tok)
    tok = re.sub("[\u0091\u2018\u201B\u2039]", "`", tok)
    tok = re.sub("[\u0092\u2019\u203A]", "'", tok)
    tok = re.sub("[\u0093\u201C\u00AB]", "``", tok)
    return re.sub("[\u0094\u201D\u00BB]", "''", tok)


_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = {"\u00A2": "cents", "\u00A3": "#", "\u0080": "$", "\u00A4": "$", "\u20A0": "$", "\u20AC": "$"}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}


def _keep(t: str) -> list[str]:
    return [t]


def _soft(t: str) -> list[str]:
    return [t.replace("\u00AD", "") or "-"]  # soft hyphens only: "-"


def _amp(t: str) -> list[str]:
    return [re.sub(r"(?i)&amp;", "&", t)]


def _nbsp(t: str) -> list[str]:
    return [t.replace(" ", "\u00A0")]


def _right_quote(t: str) -> list[str]:
    return [_latex_quotes(t, False)]


def _left_quote(t: str) -> list[str]:
    return [_latex_quotes(t, True)]


def _skip(t: str) -> list[str]:
    return []


def _phone(t: str) -> list[str]:
    return [t.replace(" ", "\u00A0").replace("(", "-LRB-").replace(")", "-RRB-")]


def _dashes(t: str) -> list[str]:
    return ["--" if 3 <= len(t) <= 4 else t]


class _Rule(NamedTuple):
    """One PTBLexer rule. Each pattern may end in a trailing context written as
    (?=(?P<c>...)); its length counts for the longest match, as in JFlex.
    pushback: characters of the match given back to the input (JFlex yypushback).
    longest: Python's backtracking may stop at a shorter match than JFlex's
    longest one for this rule, so search for the longest explicitly (rare rules only)."""

    patterns: list[re.Pattern[str]]
    action: Callable[[str], list[str]]
    pushback: int
    longest: bool


def _r(
    patterns: list[str], action: Callable[[str], list[str]] = _keep, pushback: int = 0, longest: bool = False
) -> _Rule:
    return _Rule([re.compile(p) for p in patterns], action, pushback, longest)


def _ctx(main: str, context: str) -> str:
    return f"{main}(?=(?P<c>{context}))"


_RULES: list[_Rule] = [
    _r([r"(?i:c\+\+|[cf]#)"]),  # PROG_LANGS
    _r([r"(?i:cannot)", r"'(?i:twas)"], pushback=3),  # ASSIMILATIONS3
    _r([rf"{_APOS}(?i:tis)", r"(?i:gonna|gotta|lemme|gimme|wanna)"], pushback=2),  # ASSIMILATIONS2
    _r([_SGML], _nbsp),
    _r([r"&(?i:md|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]"], lambda t: ["--"]),  # SPMDASH
    _r([r"(?i:&amp;)"], _amp),  # SPAMP
    _r([r"&(?i:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);"]),  # SPPUNC
    _r([_ctx(_WORD, _REDAUX)], _soft),
    _r([_ctx(_SWORD, _SREDAUX)], _soft),
    _r([_WORD], _soft),
    _r(  # APOWORD
        [
            rf"{_APOS}[nN]{_APOS}?",
            rf"[lLdDjJ]{_APOS}",
            rf"(?i:dunkin|somethin|ol){_APOS}",
            rf"{_APOS}(?i:em)",
            rf"[A-HJ-XZn]{_APOSETC}{_ALPHA}{{2}}{_ALPHA}*",
            rf"{_APOS}[2-9]0(?i:s)",
            rf"{_APOS}(?i:till?)",
            rf"{_ALPHA}+[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_ALPHA}*",
            rf"{_APOS}(?i:cause)",
            r"(?i:cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)",
            rf"(?i:o){_APOSETC}(?i:o)",
        ]
    ),
    _r([_ctx(rf"[yY]{_APOS}", _ALPHA)]),  # APOWORD2
    _r([r"(?i:https?)://[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},\-]"], longest=True),  # FULLURL
    _r(  # LIKELYURL
        [
            # ",-_" is a character range in the original (it excludes digits and capitals).
            r"(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}" + _URL_PATH,
            r"(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+(?i:com|net|org|edu)" + _URL_PATH,
        ],
        longest=True,
    ),
    _r(  # EMAIL
        [
            r"(?:<|(?i:&lt;))?[a-zA-Z0-9][^ \t\n\f\r\"<>|(){}\u00A0]*@(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*"
            r"[^ \t\n\f\r\"<>|(){}.\u00A0]+(?:>|(?i:&gt;))?"
        ],
        longest=True,
    ),
    _r([r"@[a-zA-Z_][a-zA-Z_0-9]*", rf"#{_LETTER}+"]),  # TWITTER
    _r([_ctx(_REDAUX, r"[^A-Za-z]")], _right_quote),
    _r([_SREDAUX], _right_quote),
    _r([rf"{_DIGIT}{{1,2}}[\-/]{_DIGIT}{{1,2}}[\-/]{_DIGIT}{{2,4}}"]),  # DATE
    _r([rf"[\-+]?{_DIGIT}+", rf"[\-+]?{_NUM_SEPARATED}"], _soft),  # NUMBER
    _r([r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)"]),  # SUBSUPNUM
    _r([rf"(?:{_DIGIT}{{1,4}}[\- \u00A0])?{_DIGIT}{{1,4}}(?:\\?/|\u2044){_DIGIT}{{1,4}}"], _nbsp),  # FRAC
    _r([r"[\u00BC\u00BD\u00BE\u2153-\u215E]"], lambda t: [_FRACTIONS.get(t, t)]),  # FRAC2
    _r(  # TBSPEC
        [
            r"-(?i:rrb|lrb|rcb|lcb|rsb|lsb)-|(?i:c\.d\.s|pro-|anti-|s(?:&|&amp;)p-500|s(?:&|&amp;)ls)",
            rf"(?i:cap){_APOS}[nN]|[cC]{_APOS}(?i:est)",
        ],
        _amp,
    ),
    _r([r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"]),  # THING3
    _r([r"[A-Z]*\$|#"]),  # DOLSIGN
    _r(  # DOLSIGN2
        [r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]"],
        lambda t: [_CURRENCY.get(t, t)],
    ),
    # ACRONYM before a sentence opener: a one-letter one ("I.") loses its period.
    _r([_ctx(rf"{_ACRO}\.", rf"{_SPACENL}+{_ACRONYM_NEXT}{_SPACENL}")], lambda t: [t[:-1] if len(t) == 2 else t]),
    _r([_ctx(_ABBREV3, rf"{_SPACENL}?{_DIGIT}")]),
    _r([_ctx(_ABBREV1, _SENTEND), _ctx(_ABBREV1, r"[\s\S]{2}"), _ABBREV1]),
    _r([rf"{_ABBREV4}\."]),  # ABBREV2
    _r([_ctx(_ABBREV4, _SPACE)]),
    _r([_ctx(_ACRO, _SPACENL)]),
    _r([_ctx(rf"{_APOS}[0-9][0-9]", _SPACENL)]),  # TBSPEC2
    _r(  # FILENAME
        [
            _ctx(
                rf"{_FILECHAR}+(?:\.{_FILECHAR}+)*\.(?i:bat|bmp|c|class|cgi|cpp|dll|docx?|exe|gif|gz|h|html?"
                r"|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip)",
                rf"{_SPACENL}|[.?!,]",
            )
        ]
    ),
    _r([_ctx(rf"{_WORD}\.", _INSENTP)], _soft),
    _r([_PHONE], _phone, longest=True),
    _r([_ctx(_DBLQUOT, r"[A-Za-z0-9$]")], _left_quote),
    _r([_DBLQUOT], _right_quote),
    _r([r"\x7F"], _skip),
    _r([r"<|(?i:&lt;)"], lambda t: ["<"]),
    _r([r">|(?i:&gt;)"], lambda t: [">"]),
    _r(  # SMILEY: parentheses inside become -LRB- / -RRB-
        [_ctx(r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]", r"[^A-Za-z0-9]")],
        lambda t: [t.replace("(", "-LRB-").replace(")", "-RRB-")],
    ),
    _r(  # ASIANSMILEY
        [
            r"[\^x=~<>]\.\[\^x=~<>]|[\-^x=~<>']_[\-^x=~<>']|\([\-^x=~<>'][_.]?[\-^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\)"
        ],
        lambda t: [t.replace("(", "-LRB-").replace(")", "-RRB-")],
    ),
    _r([r"[(){}\[\]]"], lambda t: [_BRACKETS[t]]),
    _r([r"-+"], _dashes),  # HYPHENS
    _r([r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]"], lambda t: ["..."]),  # LDOTS
    _r([r"@+|#+|_+"]),  # FNMARKS
    _r([r"\*+|(?:\\\*){1,3}"]),  # ASTS
    _r([_INSENTP]),
    _r([r"[?!]+"]),
    _r([r"[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]"]),
    _r([r"="]),
    _r([r"/"]),
    _r([_ctx(rf"{_HTHING}\.", _INSENTP), _HTHING], _soft),
    _r([_ctx(rf"{_THING}\.", _INSENTP), _THING]),
    _r([_ctx(rf"{_THINGA}\.", _INSENTP), _THINGA], _amp),
    _r([_ctx("'", r"[A-Za-z][^ \t\n\r\u00A0]")], _left_quote),
    _r([_REDAUX], _right_quote),
    _r(_QUOTES, _right_quote),
    _r([r"<<|>>"]),  # FAKEDUCKFEET
    _r([_MISCSYMBOL]),
    _r([rf"\x00|{_SPACE}+|[\u200B\u200E\u200F\uFEFF]|{_NEWLINE}|(?i:&nbsp;)"], _skip),
]

_SPACES = re.compile(rf"{_SPACE}+")
_PLAIN_WORD = re.compile(r"[A-Za-z]+(?=[ \n]|$)")
_SPECIAL_WORDS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
_OTHER_NEWLINES = re.compile("[\r\u2028\u2029\u000B\u000C\u0085]")


_LONGEST_SPAN = 64  # no URL, e-mail or phone number in a caption is longer


def _longest_match(pattern: re.Pattern[str], text: str, start: int, end: int) -> int:
    """End of the longest match of ``pattern`` at ``start`` (JFlex semantics), given one ending at ``end``."""
    for stop in range(min(len(text), start + _LONGEST_SPAN), end, -1):
        if pattern.fullmatch(text, start, stop):
            return stop
    return end


_ASCII = frozenset(map(chr, range(128)))


def _first_chars(seq: list, ignore_case: bool) -> tuple[frozenset[str], bool]:
    """(the ASCII characters a match of the parsed regex ``seq`` can begin with,
    whether it can be empty). Conservative where unsure; used only to skip rules."""
    first: set[str] = set()
    for op, av in seq:
        if op is _C.LITERAL:
            chars, nullable = {chr(av)}, False
        elif op is _C.NOT_LITERAL:
            chars, nullable = set(_ASCII) - ({chr(av)} if not ignore_case else {chr(av).lower(), chr(av).upper()}), False
        elif op is _C.IN:
            chars, nullable = _class_chars(av), False
        elif op is _C.BRANCH:
            results = [_first_chars(branch, ignore_case) for branch in av[1]]
            chars, nullable = set().union(*(r[0] for r in results)), any(r[1] for r in results)
        elif op is _C.SUBPATTERN:
            flags = (ignore_case or bool(av[1] & re.IGNORECASE)) and not av[2] & re.IGNORECASE
            chars, nullable = _first_chars(av[3], flags)
        elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT) or op.name == "POSSESSIVE_REPEAT":
            chars, nullable = _first_chars(av[2], ignore_case)
            nullable = nullable or av[0] == 0
        elif op is _C.AT or op in (_C.ASSERT, _C.ASSERT_NOT):
            chars, nullable = set(), True
        elif op.name == "ATOMIC_GROUP":
            chars, nullable = _first_chars(av, ignore_case)
        else:  # anything else (ANY, group references): assume any character
            chars, nullable = set(_ASCII), True
        if ignore_case:
            chars = set(chars) | {c.swapcase() for c in chars}
        first |= chars
        if not nullable:
            return frozenset(first & _ASCII), False
    return frozenset(first & _ASCII), True


_CATEGORY_TESTS: dict = {
    _C.CATEGORY_DIGIT: str.isdecimal,
    _C.CATEGORY_NOT_DIGIT: lambda c: not c.isdecimal(),
    _C.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
    _C.CATEGORY_NOT_WORD: lambda c: not (c.isalnum() or c == "_"),
    _C.CATEGORY_SPACE: str.isspace,
    _C.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
}


def _class_chars(items: list) -> set[str]:
    """ASCII members of a parsed character class."""
    chars: set[str] = set()
    negate = False
    for op, av in items:
        if op is _C.NEGATE:
            negate = True
        elif op is _C.LITERAL:
            chars.add(chr(av))
        elif op is _C.RANGE:
            chars.update(map(chr, range(av[0], min(av[1], 127) + 1)))
        elif op is _C.CATEGORY:
            test = _CATEGORY_TESTS.get(av, lambda c: True)
            chars.update(c for c in _ASCII if test(c))
    return set(_ASCII) - chars if negate else chars


def _plain(tree: object) -> object:
    """The parser's tree as plain lists and tuples (much faster to walk)."""
    if isinstance(tree, tuple):
        return tuple(_plain(x) for x in tree)
    if isinstance(tree, list) or type(tree).__name__ == "SubPattern":
        return [_plain(x) for x in tree]
    return tree


def _rules_by_first_char() -> tuple[tuple[tuple[int, tuple[re.Pattern[str], ...]], ...], ...]:
    """For each ASCII character, the rules (index, patterns) whose patterns can match text starting with it."""
    table: list[dict[int, list[re.Pattern[str]]]] = [{} for _ in range(128)]
    for index, rule in enumerate(_RULES):
        for pattern in rule.patterns:
            for char in _first_chars(_plain(_parse(pattern.pattern)), False)[0]:
                table[ord(char)].setdefault(index, []).append(pattern)
    return tuple(tuple((index, tuple(patterns)) for index, patterns in sorted(row.items())) for row in table)


# Rules per first character, for ASCII (the common case); other characters try all.
_ALL_RULES = tuple((index, tuple(rule.patterns)) for index, rule in enumerate(_RULES))
_ASCII_RULES = _rules_by_first_char()


def _lex(text: str) -> list[str]:
    """PTBLexer tokens of ``text`` (not lowercased, punctuation kept): at each position
    the longest match over all rules wins, ties going to the earlier rule."""
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        # Fast paths for the common cases. No rule but the skipping one starts with a
        # space or a newline (and JFlex skips a whole run of spaces at once).
        if text[i] == " ":
            i = _SPACES.match(text, i).end()
            continue
        if text[i] == "\n":
            i += 1
            continue
        # A run of ASCII letters up to a space is one WORD token (no other rule can
        # match longer from here or change it), except the words that get split.
        m = _PLAIN_WORD.match(text, i)
        if m is not None and m.group().lower() not in _SPECIAL_WORDS:
            tokens.append(m.group())
            i = m.end()
            continue
        best: tuple[int, int, int] | None = None  # (total length, rule index, main length)
        code = ord(text[i])
        for index, patterns in _ASCII_RULES[code] if code < 128 else _ALL_RULES:
            for pattern in patterns:
                m = pattern.match(text, i)
                if m is None:
                    continue
                main = m.end() - i
                if _RULES[index].longest:
                    main = _longest_match(pattern, text, i, m.end()) - i
                context = m.groupdict().get("c")
                total = main + (len(context) if context else 0)
                if main > 0 and (best is None or total > best[0]):
                    best = (total, index, main)
        if best is None:  # untokenizable character: PTBLexer deletes it
            i += 1
            continue
        _, index, main = best
        rule = _RULES[index]
        consumed = main - rule.pushback if 0 < rule.pushback < main else main
        tokens.extend(rule.action(text[i : i + consumed]))
        i += consumed
    return tokens


def tokenize(text: str) -> list[str]:
    """Lowercased PTB tokens of one caption, punctuation dropped, as pycocoevalcap's tokenizer gives them."""
    text = text.replace("\n", " ")
    text = _OTHER_NEWLINES.sub(" ", text)
    # In the official file every caption is followed by a newline (see module doc).
    line = " ".join(t.lower() for t in _lex(text + "\n"))
    # pycocoevalcap strips the printed line before splitting it at spaces, which can
    # trim a no-break space ending the last token.
    return [t for t in line.rstrip().split(" ") if t and t not in PUNCTUATIONS]
