//! The report as a sequence of document blocks, written once and rendered
//! by both the HTML and the Markdown writer, so the two show the same
//! sections and the same figures.

use super::text::{self, NONE};
use super::{AgreementReport, Report, Severity, Weekly};

/// Section headings (also checked by the tests).
pub(super) const H_CHAIN: &str = "Verifikasi Rantai Log Audit";
pub(super) const H_SUMMARY: &str = "Ringkasan";
pub(super) const H_WEEKLY: &str = "Permintaan per Minggu (ISO)";
pub(super) const H_TOP_CODES: &str = "Kode Penolakan Teratas";
pub(super) const H_SNAPSHOTS: &str = "Snapshot yang Digunakan";
pub(super) const H_UNAUTH: &str = "Permintaan Tanpa Autentikasi";
pub(super) const H_FINDINGS: &str = "Temuan";
pub(super) const H_IDENTITY: &str = "Identitas";
pub(super) const H_REQUESTS: &str = "Permintaan";
pub(super) const H_ELEMENTS: &str = "Elemen";
pub(super) const H_BUDGET: &str = "Anggaran";
pub(super) const H_SAVED: &str = "Kueri tersimpan";
pub(super) const H_PATTERNS: &str = "Pola yang perlu diperiksa";
pub(super) const H_NOTES: &str = "Catatan";

/// How a paragraph or list item is highlighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Style {
    Plain,
    Ok,
    Warn,
    Danger,
    Info,
    /// Small print under a table.
    Note,
}

impl From<Severity> for Style {
    fn from(s: Severity) -> Style {
        match s {
            Severity::Danger => Style::Danger,
            Severity::Warning => Style::Warn,
            Severity::Info => Style::Info,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    Text(String),
    /// Right-aligned figure.
    Num(String),
    /// Code identifier or SQL.
    Code(String),
    /// A percentage with its bar.
    Bar(Option<f64>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Block<'a> {
    /// The broken-chain warning; always the first block when present.
    ChainAlert(String),
    Title {
        title: String,
        meta: Vec<(String, String)>,
    },
    /// Opens a top-level section (`h2`).
    Section {
        id: String,
        heading: String,
        /// Starts on a new page when printed.
        page_break: bool,
    },
    EndSection,
    /// A sub-section heading (`h3`); what follows up to the next one is
    /// kept on one page where possible.
    Sub(String),
    Para(Style, String),
    /// A SQL template.
    Code(String),
    Table {
        head: Vec<String>,
        rows: Vec<Vec<Cell>>,
    },
    List(Vec<(Style, String)>),
    /// Requests per ISO week: a chart in HTML, a table in Markdown.
    Weekly(&'a Weekly),
}

fn t(s: impl Into<String>) -> Cell {
    Cell::Text(s.into())
}

fn n(v: u64) -> Cell {
    Cell::Num(text::int(v))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "tidak ada".to_string()
    } else {
        items.join(", ")
    }
}

/// The id of an agreement's section, safe as an XML id.
pub(super) fn anchor(id: &str) -> String {
    let mut out = String::from("pks-");
    out.extend(id.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

/// The document for `report`.
pub(super) fn blocks(r: &Report) -> Vec<Block<'_>> {
    let mut b: Vec<Block> = Vec::new();
    if !r.chain.ok {
        b.push(Block::ChainAlert(r.chain.message.clone()));
    }
    let mut meta = vec![
        (
            "Periode".to_string(),
            format!("{} s.d. {} (WIB)", r.from, r.to),
        ),
        ("Dibuat".to_string(), r.generated_at.clone()),
        ("Tanggal acuan".to_string(), r.as_of.clone()),
    ];
    if let Some(f) = &r.agreement_filter {
        meta.push(("Perjanjian".to_string(), f.clone()));
    }
    b.push(Block::Title {
        title: r.title.clone(),
        meta,
    });

    // Chain.
    b.push(Block::Section {
        id: "rantai".into(),
        heading: H_CHAIN.into(),
        page_break: false,
    });
    if r.chain.ok {
        b.push(Block::Para(Style::Ok, r.chain.message.clone()));
    } else {
        b.push(Block::Table {
            head: strings(&["Butir", "Nilai"]),
            rows: vec![
                vec![t("Status"), t("RUSAK")],
                vec![
                    t("Entri pertama yang rusak (seq)"),
                    Cell::Num(r.chain.seq.unwrap_or(0).to_string()),
                ],
                vec![t("Alasan"), t(r.chain.reason.clone().unwrap_or_default())],
                vec![t("Jumlah entri di log"), n(r.chain.entries)],
                vec![
                    t("Hash terakhir yang terverifikasi"),
                    Cell::Code(text::opt(&r.chain.head_hash).to_string()),
                ],
            ],
        });
    }
    b.push(Block::EndSection);

    summary(r, &mut b);

    for a in &r.agreements {
        agreement(a, &mut b);
    }

    b.push(Block::Section {
        id: "catatan".into(),
        heading: H_NOTES.into(),
        page_break: false,
    });
    b.push(Block::List(
        r.rules
            .iter()
            .map(|rule| (Style::Plain, rule.text.clone()))
            .collect(),
    ));
    b.push(Block::EndSection);
    b
}

fn summary<'a>(r: &'a Report, b: &mut Vec<Block<'a>>) {
    let s = &r.summary;
    b.push(Block::Section {
        id: "ringkasan".into(),
        heading: H_SUMMARY.into(),
        page_break: false,
    });
    b.push(Block::Table {
        head: strings(&["Permintaan", "Total", "Diterima", "Ditolak", "Gagal"]),
        rows: vec![
            vec![
                t("Semua permintaan"),
                n(s.requests.total),
                n(s.requests.accepted),
                n(s.requests.rejected),
                n(s.requests.failed),
            ],
            vec![
                t("Tanpa perjanjian (token tidak ada/tidak dikenal)"),
                n(s.unattributed.total),
                n(s.unattributed.accepted),
                n(s.unattributed.rejected),
                n(s.unattributed.failed),
            ],
        ],
    });
    if s.records_ignored > 0 {
        b.push(Block::Para(
            Style::Note,
            format!(
                "{} entri di luar periode atau dengan waktu yang tidak terbaca diabaikan.",
                text::int(s.records_ignored)
            ),
        ));
    }
    if r.agreements.is_empty() {
        b.push(Block::Para(
            Style::Plain,
            "Tidak ada perjanjian dalam periode ini.".into(),
        ));
    } else {
        b.push(Block::Table {
            head: strings(&[
                "Perjanjian",
                "Instansi",
                "Total",
                "Diterima",
                "Ditolak",
                "Gagal",
                "Serius",
                "Perhatian",
            ]),
            rows: r
                .agreements
                .iter()
                .map(|a| {
                    let count = |s: Severity| a.findings.iter().filter(|f| f.severity == s).count();
                    vec![
                        Cell::Code(a.id.clone()),
                        t(a.identity
                            .institution
                            .clone()
                            .unwrap_or_else(|| "(tidak lagi ada di kebijakan)".into())),
                        n(a.requests.counts.total),
                        n(a.requests.counts.accepted),
                        n(a.requests.counts.rejected),
                        n(a.requests.counts.failed),
                        n(count(Severity::Danger) as u64),
                        n(count(Severity::Warning) as u64),
                    ]
                })
                .collect(),
        });
    }
    b.push(Block::EndSection);

    b.push(Block::Section {
        id: "mingguan".into(),
        heading: H_WEEKLY.into(),
        page_break: false,
    });
    b.push(Block::Weekly(&r.weekly));
    b.push(Block::EndSection);

    b.push(Block::Section {
        id: "kode-penolakan".into(),
        heading: H_TOP_CODES.into(),
        page_break: false,
    });
    if r.top_rejection_codes.is_empty() {
        b.push(Block::Para(Style::Plain, "Tidak ada penolakan.".into()));
    } else {
        b.push(Block::Table {
            head: strings(&["Kode", "Jumlah"]),
            rows: r
                .top_rejection_codes
                .iter()
                .map(|c| vec![Cell::Code(c.code.clone()), n(c.count)])
                .collect(),
        });
    }
    b.push(Block::EndSection);

    b.push(Block::Section {
        id: "snapshot".into(),
        heading: H_SNAPSHOTS.into(),
        page_break: false,
    });
    if r.snapshots.is_empty() {
        b.push(Block::Para(
            Style::Plain,
            "Tidak ada permintaan yang memakai snapshot.".into(),
        ));
    } else {
        b.push(Block::Table {
            head: strings(&["Snapshot", "Permintaan", "Diterima"]),
            rows: r
                .snapshots
                .iter()
                .map(|s| vec![Cell::Code(s.snapshot.clone()), n(s.requests), n(s.accepted)])
                .collect(),
        });
    }
    b.push(Block::EndSection);

    let u = &r.unauthenticated;
    b.push(Block::Section {
        id: "tanpa-autentikasi".into(),
        heading: H_UNAUTH.into(),
        page_break: false,
    });
    if r.agreement_filter.is_some() {
        b.push(Block::Para(
            Style::Plain,
            "Tidak ditampilkan: permintaan tanpa autentikasi tidak termasuk perjanjian mana pun."
                .into(),
        ));
    } else if u.total == 0 {
        b.push(Block::Para(
            Style::Plain,
            "Tidak ada permintaan tanpa autentikasi yang ditolak.".into(),
        ));
    } else {
        b.push(Block::Para(
            Style::Plain,
            format!(
                "{} penolakan dari {} alamat. Dihitung per alamat, menit dan kode (bukan satu entri log audit per permintaan); tidak ada data yang dirilis kepada mereka.",
                text::int(u.total),
                text::int(u.addresses)
            ),
        ));
        b.push(Block::Table {
            head: strings(&["Kode", "Jumlah"]),
            rows: u
                .by_code
                .iter()
                .map(|c| vec![Cell::Code(c.code.clone()), n(c.count)])
                .collect(),
        });
        b.push(Block::Table {
            head: strings(&["Alamat", "Penolakan", "Menit", "Kode terbanyak"]),
            rows: u
                .top_addresses
                .iter()
                .map(|a| {
                    let addr = if a.address.is_empty() {
                        "(tidak diketahui)".to_string()
                    } else {
                        a.address.clone()
                    };
                    vec![
                        Cell::Code(addr),
                        n(a.count),
                        n(a.minutes),
                        Cell::Code(a.top_code.clone()),
                    ]
                })
                .collect(),
        });
    }
    b.push(Block::EndSection);
}

fn agreement<'a>(a: &'a AgreementReport, b: &mut Vec<Block<'a>>) {
    let heading = match &a.identity.institution {
        Some(i) => format!("Perjanjian {} — {i}", a.id),
        None => format!("Perjanjian {} — tidak lagi ada di kebijakan", a.id),
    };
    b.push(Block::Section {
        id: anchor(&a.id),
        heading,
        page_break: true,
    });

    b.push(Block::Sub(H_FINDINGS.into()));
    if a.findings.is_empty() {
        b.push(Block::Para(Style::Ok, "Tidak ada temuan.".into()));
    } else {
        b.push(Block::List(
            a.findings
                .iter()
                .map(|f| {
                    (
                        f.severity.into(),
                        format!("{}: {}", text::severity(f.severity), f.message),
                    )
                })
                .collect(),
        ));
    }

    // Identitas.
    let id = &a.identity;
    b.push(Block::Sub(H_IDENTITY.into()));
    let mut rows = vec![
        vec![t("Nomor PKS"), t(text::opt(&id.pks_number))],
        vec![t("Instansi"), t(text::opt(&id.institution))],
        vec![
            t("Tahap"),
            t(id.stage.as_deref().map_or(NONE.to_string(), text::stage)),
        ],
        vec![
            t("Masa berlaku"),
            t(format!(
                "{} s.d. {}",
                text::opt(&id.valid_from),
                text::opt(&id.valid_until)
            )),
        ],
        vec![
            t("Metode perlindungan"),
            t(id.method.as_deref().map_or(NONE.to_string(), text::method)),
        ],
    ];
    if let Some(budget) = id.budget_per_period {
        rows.push(vec![
            t("Anggaran privasi per periode"),
            Cell::Num(text::num(budget)),
        ]);
    }
    rows.push(vec![
        t("Sisa masa berlaku"),
        t(id.days_until_expiry
            .map_or(NONE.to_string(), |d| format!("{d} hari"))),
    ]);
    b.push(Block::Table {
        head: strings(&["Butir", "Nilai"]),
        rows,
    });
    if !a.in_policy {
        b.push(Block::Para(
            Style::Warn,
            "Perjanjian ini tidak lagi ada di berkas kebijakan; hanya tercatat di log audit."
                .into(),
        ));
    }
    if let (true, Some(d)) = (id.expiry_warning, id.days_until_expiry) {
        b.push(Block::Para(
            Style::Warn,
            format!("Masa berlaku: {}.", text::expiry(d)),
        ));
    }
    let o = &id.outside_validity;
    let style = if !o.checked {
        Style::Warn
    } else if o.accepted > 0 {
        Style::Danger
    } else if o.total > 0 {
        Style::Warn
    } else {
        Style::Ok
    };
    b.push(Block::Para(
        style,
        format!("Pemeriksaan masa berlaku: {}.", text::outside_validity(o)),
    ));

    // Permintaan.
    let rq = &a.requests;
    b.push(Block::Sub(H_REQUESTS.into()));
    b.push(Block::Table {
        head: strings(&["Total", "Diterima", "Ditolak", "Gagal"]),
        rows: vec![vec![
            n(rq.counts.total),
            n(rq.counts.accepted),
            n(rq.counts.rejected),
            n(rq.counts.failed),
        ]],
    });
    if rq.rejections_by_code.is_empty() {
        b.push(Block::Para(Style::Plain, "Tidak ada penolakan.".into()));
    } else {
        b.push(Block::Table {
            head: strings(&["Kode penolakan", "Jumlah"]),
            rows: rq
                .rejections_by_code
                .iter()
                .map(|c| vec![Cell::Code(c.code.clone()), n(c.count)])
                .collect(),
        });
    }
    if !rq.failures_by_code.is_empty() {
        b.push(Block::Table {
            head: strings(&["Kode kegagalan", "Jumlah"]),
            rows: rq
                .failures_by_code
                .iter()
                .map(|c| vec![Cell::Code(c.code.clone()), n(c.count)])
                .collect(),
        });
    }
    let s = &rq.sensitive;
    let detail = format!(
        "{} penolakan sensitif (identitas, record key, elemen di luar PKS, izin Menteri); \
         paling banyak {} dalam {} jam{}; {} dari semua permintaan.",
        text::int(s.total),
        text::int(s.max_in_window),
        super::SPIKE_WINDOW_HOURS,
        s.window_start
            .as_deref()
            .map(|w| format!(" (mulai {w})"))
            .unwrap_or_default(),
        text::pct(s.share_percent)
    );
    if s.spike {
        b.push(Block::Para(
            Style::Warn,
            format!("LONJAKAN PENOLAKAN SENSITIF: {detail}"),
        ));
    } else {
        b.push(Block::Para(
            Style::Plain,
            format!("Tidak ada lonjakan: {detail}"),
        ));
    }
    if !s.by_code.is_empty() {
        b.push(Block::Table {
            head: strings(&["Kode sensitif", "Jumlah"]),
            rows: s
                .by_code
                .iter()
                .map(|c| vec![Cell::Code(c.code.clone()), n(c.count)])
                .collect(),
        });
    }

    // Elemen.
    let e = &a.elements;
    b.push(Block::Sub(H_ELEMENTS.into()));
    if e.used.is_empty() {
        b.push(Block::Para(
            Style::Plain,
            "Tidak ada elemen yang dipakai oleh rilis.".into(),
        ));
    } else {
        b.push(Block::Table {
            head: strings(&["Elemen dipakai", "Rilis", "Status"]),
            rows: e
                .used
                .iter()
                .map(|u| {
                    let not_permitted = e.used_not_permitted.iter().any(|x| x.element == u.element);
                    let protected = e.protected_used.iter().any(|x| x.element == u.element);
                    let status = match (not_permitted, protected) {
                        (true, _) => "TIDAK diizinkan",
                        (false, true) => "diizinkan, dilindungi (izin Menteri)",
                        (false, false) => "diizinkan",
                    };
                    vec![Cell::Code(u.element.clone()), n(u.queries), t(status)]
                })
                .collect(),
        });
    }
    b.push(Block::Table {
        head: strings(&["Pemeriksaan", "Elemen"]),
        rows: vec![
            vec![t("Diizinkan dalam PKS"), t(list_or_none(&e.permitted))],
            vec![t("Izin Menteri"), t(list_or_none(&e.minister_permission))],
            vec![
                t("Diizinkan tetapi tidak pernah dipakai — kandidat penyempitan PKS"),
                t(list_or_none(&e.unused_permitted)),
            ],
            vec![
                t("Elemen dilindungi yang dipakai"),
                t(list_or_none(
                    &e.protected_used
                        .iter()
                        .map(|u| u.element.clone())
                        .collect::<Vec<_>>(),
                )),
            ],
            vec![
                t("Dipakai tetapi tidak (lagi) diizinkan"),
                t(list_or_none(
                    &e.used_not_permitted
                        .iter()
                        .map(|u| u.element.clone())
                        .collect::<Vec<_>>(),
                )),
            ],
        ],
    });
    if !a.in_policy {
        b.push(Block::Para(
            Style::Warn,
            "Perjanjian tidak ada di kebijakan saat ini, sehingga tidak ada elemen yang \
             diizinkan; elemen di atas dipakai ketika perjanjian masih berlaku."
                .into(),
        ));
    } else if !e.used_not_permitted.is_empty() {
        b.push(Block::Para(
            Style::Danger,
            "Ada elemen yang dipakai tetapi tidak (lagi) diizinkan; periksa perubahan PKS.".into(),
        ));
    }

    // Anggaran.
    let g = &a.budget;
    b.push(Block::Sub(H_BUDGET.into()));
    if !g.periods.is_empty() {
        b.push(Block::Table {
            head: strings(&[
                "Periode",
                "Terkunci (commit)",
                "Tertunda",
                "Terpakai",
                "Anggaran",
                "Persentase",
                "Reservasi (pending)",
            ]),
            rows: g
                .periods
                .iter()
                .map(|p| {
                    vec![
                        t(p.period.clone()),
                        Cell::Num(text::num(p.committed)),
                        Cell::Num(text::num(p.pending)),
                        Cell::Num(text::num(p.spent)),
                        Cell::Num(p.allowance.map_or(NONE.to_string(), text::num)),
                        Cell::Bar(p.percent),
                        Cell::Num(format!(
                            "{} ({})",
                            text::int(p.reservations),
                            text::int(p.pending_reservations)
                        )),
                    ]
                })
                .collect(),
        });
        b.push(Block::Para(
            Style::Note,
            "Angka anggaran dari buku besar mencakup seluruh periode enam bulan, juga bagian \
             periode di luar jendela laporan."
                .into(),
        ));
    } else if g.method.as_deref() == Some("cell_key") {
        b.push(Block::Para(
            Style::Plain,
            "Metode cell-key tidak memakai anggaran privasi; yang dilaporkan adalah bagian sel \
             yang disembunyikan."
                .into(),
        ));
    }
    let sp = &g.suppression;
    b.push(Block::Table {
        head: strings(&[
            "Rilis",
            "Sel",
            "Sel disembunyikan",
            "Persentase disembunyikan",
        ]),
        rows: vec![vec![
            n(sp.releases),
            n(sp.cells),
            n(sp.suppressed_cells),
            Cell::Num(text::pct(sp.percent)),
        ]],
    });

    // Kueri tersimpan.
    b.push(Block::Sub(H_SAVED.into()));
    if a.saved_queries.is_empty() {
        b.push(Block::Para(
            Style::Plain,
            "Tidak ada kueri tersimpan yang dipakai.".into(),
        ));
    } else {
        b.push(Block::Table {
            head: strings(&["Kueri tersimpan", "Total", "Diterima", "Ditolak", "Gagal"]),
            rows: a
                .saved_queries
                .iter()
                .map(|q| {
                    vec![
                        Cell::Code(q.name.clone()),
                        n(q.requests.total),
                        n(q.requests.accepted),
                        n(q.requests.rejected),
                        n(q.requests.failed),
                    ]
                })
                .collect(),
        });
    }

    // Pola.
    let p = &a.patterns;
    b.push(Block::Sub(H_PATTERNS.into()));
    if p.differencing.is_empty() {
        b.push(Block::Para(
            Style::Ok,
            format!(
                "Pola pembedaan (differencing): tidak ada templat kueri dengan ≥ {} nilai berbeda pada satu posisi.",
                super::DIFFERENCING_MIN_VARIANTS
            ),
        ));
    }
    for d in &p.differencing {
        b.push(Block::Para(
            Style::Warn,
            format!(
                "Pola pembedaan (differencing): templat dengan {} nilai berbeda pada literal ke-{} ({} rilis); \
                 literal lain: {}.",
                d.values.len(),
                d.position,
                text::int(d.queries),
                d.fixed.join(", ")
            ),
        ));
        b.push(Block::Code(d.template.clone()));
        b.push(Block::Table {
            head: strings(&["Nilai", "Rilis"]),
            rows: d
                .values
                .iter()
                .map(|v| vec![Cell::Code(v.value.clone()), n(v.requests)])
                .collect(),
        });
    }
    let off = &p.off_hours;
    let off_text = format!(
        "{} permintaan di luar jam kerja (Senin–Jumat {:02}.00–{:02}.00 WIB).",
        text::int(off.total),
        super::OFFICE_START_HOUR,
        super::OFFICE_END_HOUR
    );
    if off.bursts.is_empty() {
        b.push(Block::Para(
            Style::Plain,
            format!(
                "Di luar jam kerja: {off_text} Tidak ada jam dengan ≥ {} permintaan.",
                super::OFF_HOURS_BURST_MIN
            ),
        ));
    } else {
        b.push(Block::Para(
            Style::Warn,
            format!(
                "Di luar jam kerja: {off_text} {} jam dengan ≥ {} permintaan:",
                text::int(off.bursts.len() as u64),
                super::OFF_HOURS_BURST_MIN
            ),
        ));
        b.push(Block::Table {
            head: strings(&["Tanggal", "Hari", "Jam", "Permintaan"]),
            rows: off
                .bursts
                .iter()
                .map(|h| {
                    vec![
                        t(h.date.clone()),
                        t(h.weekday.clone()),
                        t(text::hour_range(h.hour)),
                        n(h.requests),
                    ]
                })
                .collect(),
        });
    }
    if p.multi_address_tokens.is_empty() {
        b.push(Block::Para(
            Style::Ok,
            "Token: tidak ada token yang dipakai dari lebih dari satu alamat.".into(),
        ));
    } else {
        b.push(Block::Para(
            Style::Warn,
            format!(
                "Token: {} token dipakai dari lebih dari satu alamat.",
                text::int(p.multi_address_tokens.len() as u64)
            ),
        ));
        b.push(Block::Table {
            head: strings(&["Token", "Alamat", "Permintaan"]),
            rows: p
                .multi_address_tokens
                .iter()
                .flat_map(|tok| {
                    tok.addresses.iter().map(move |ad| {
                        vec![
                            Cell::Code(tok.token_id.clone()),
                            Cell::Code(ad.value.clone()),
                            n(ad.requests),
                        ]
                    })
                })
                .collect(),
        });
    }
    b.push(Block::EndSection);
}
