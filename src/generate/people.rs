//! Households and people: the demographic model of the generator.
//!
//! One [`KecamatanGenerator`] owns a kecamatan: its random stream (seeded
//! from the run seed and the kecamatan code, so output does not depend on
//! thread scheduling) and its NIK and KK serial counters, which makes both
//! numbers unique by construction.
//!
//! The model, in short: households are single people, couples, nuclear
//! families, single parents, or extended families (with a parent, in-law,
//! relative, grandchild or helper). Ages, marital status, education,
//! occupation and certificates follow from each member's role and age, so
//! no five-year-old has a degree and school-age children are
//! PELAJAR/MAHASISWA. Calibration targets and their tests are in
//! `tests/generator.rs`.

use std::collections::HashMap;
use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::names;
use crate::catalog::code_list;
use crate::record_key::RecordKeyHasher;
use crate::warehouse::PersonRow;

pub use crate::calendar::{age_on, date_to_days, days_to_date};

/// Resolved labels of the code lists, so hot loops hand out `&'static str`.
struct Labels {
    sex: [&'static str; 2],
    agama: HashMap<&'static str, &'static str>,
    pendidikan: Vec<&'static str>,
    kawin: [&'static str; 4],
    shk: Vec<&'static str>,
    cacat: Vec<&'static str>,
    darah: Vec<&'static str>,
    ada: [&'static str; 2],
    kerja: HashMap<&'static str, &'static str>,
}

fn labels() -> &'static Labels {
    static L: OnceLock<Labels> = OnceLock::new();
    L.get_or_init(|| {
        let all = |name: &str| -> Vec<&'static str> {
            code_list(name)
                .unwrap_or_else(|| panic!("code list {name}"))
                .labels()
                .collect()
        };
        let map = |name: &str| -> HashMap<&'static str, &'static str> {
            all(name).into_iter().map(|l| (l, l)).collect()
        };
        let kawin = all("status_perkawinan");
        let sex = all("jenis_kelamin");
        let ada = all("kepemilikan_akta");
        Labels {
            sex: [sex[0], sex[1]],
            agama: map("agama"),
            pendidikan: all("pendidikan_terakhir"),
            kawin: [kawin[0], kawin[1], kawin[2], kawin[3]],
            shk: all("status_hubungan_keluarga"),
            cacat: all("penyandang_cacat"),
            darah: all("golongan_darah"),
            ada: [ada[0], ada[1]],
            kerja: map("jenis_pekerjaan"),
        }
    })
}

fn job(label: &str) -> &'static str {
    labels()
        .kerja
        .get(label)
        .copied()
        .unwrap_or_else(|| panic!("occupation '{label}' missing from the code list"))
}

/// Religion shares by region. Sources: Dukcapil/BPS published shares,
/// rounded; Kota Pontianak as given in the reference notes.
fn religion_mix(kab: &str) -> &'static [(&'static str, f64)] {
    const PONTIANAK: &[(&str, f64)] = &[
        ("ISLAM", 0.745),
        ("BUDHA", 0.12),
        ("KRISTEN", 0.058),
        ("KATHOLIK", 0.062),
        ("KHONGHUCU", 0.013),
        ("HINDU", 0.002),
    ];
    const KALBAR: &[(&str, f64)] = &[
        ("ISLAM", 0.60),
        ("KATHOLIK", 0.22),
        ("KRISTEN", 0.12),
        ("BUDHA", 0.05),
        ("KHONGHUCU", 0.008),
        ("HINDU", 0.002),
    ];
    const BALI: &[(&str, f64)] = &[
        ("HINDU", 0.86),
        ("ISLAM", 0.10),
        ("KRISTEN", 0.017),
        ("KATHOLIK", 0.01),
        ("BUDHA", 0.005),
    ];
    const NTT: &[(&str, f64)] = &[
        ("KATHOLIK", 0.53),
        ("KRISTEN", 0.36),
        ("ISLAM", 0.105),
        ("HINDU", 0.005),
    ];
    const SULUT: &[(&str, f64)] = &[
        ("KRISTEN", 0.64),
        ("ISLAM", 0.31),
        ("KATHOLIK", 0.045),
        ("HINDU", 0.005),
    ];
    const PAPUA: &[(&str, f64)] = &[("KRISTEN", 0.65), ("KATHOLIK", 0.18), ("ISLAM", 0.17)];
    const SUMUT: &[(&str, f64)] = &[
        ("ISLAM", 0.64),
        ("KRISTEN", 0.27),
        ("KATHOLIK", 0.065),
        ("BUDHA", 0.02),
        ("HINDU", 0.005),
    ];
    const MALUKU: &[(&str, f64)] = &[("ISLAM", 0.52), ("KRISTEN", 0.41), ("KATHOLIK", 0.07)];
    const DKI: &[(&str, f64)] = &[
        ("ISLAM", 0.835),
        ("KRISTEN", 0.086),
        ("KATHOLIK", 0.04),
        ("BUDHA", 0.035),
        ("HINDU", 0.002),
        ("KHONGHUCU", 0.002),
    ];
    const DEFAULT: &[(&str, f64)] = &[
        ("ISLAM", 0.872),
        ("KRISTEN", 0.074),
        ("KATHOLIK", 0.03),
        ("HINDU", 0.017),
        ("BUDHA", 0.006),
        ("KHONGHUCU", 0.0005),
        ("KEPERCAYAAN TERHADAP TUHAN YME", 0.0005),
    ];
    match kab {
        "61.71" => PONTIANAK,
        _ => match &kab[..2] {
            "61" => KALBAR,
            "51" => BALI,
            "53" => NTT,
            "71" => SULUT,
            "12" => SUMUT,
            "81" => MALUKU,
            "31" => DKI,
            p if p.starts_with('9') => PAPUA,
            _ => DEFAULT,
        },
    }
}

/// Facts about the kab/kota a kecamatan belongs to.
#[derive(Debug, Clone)]
pub struct KabContext {
    /// Kemendagri kab/kota code (`61.71`).
    pub kode_kab: String,
    /// Kemendagri provinsi code (`61`).
    pub kode_prov: String,
    /// Birthplace label, e.g. `PONTIANAK`.
    pub birthplace: String,
    /// True for a kota, false for a kabupaten; shifts household mixes.
    pub urban: bool,
    /// Share of men in the reference population.
    pub male_share: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Head,
    Spouse,
    Child,
    Parent,
    ParentInLaw,
    Grandchild,
    ChildInLaw,
    Relative,
    Helper,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Marital {
    Single,
    Married,
    Divorced,
    Widowed,
}

#[derive(Debug)]
struct Member {
    role: Role,
    female: bool,
    birth: i32,
    marital: Marital,
    married_on: Option<i32>,
    divorced_on: Option<i32>,
    mother: Option<usize>,
    father: Option<usize>,
}

#[derive(Clone, Copy)]
enum Naming {
    Common,
    Chinese(&'static str),
    Bali,
    Christian,
}

/// A fully materialised person; rows borrow from it.
struct Person {
    nik: String,
    nama: String,
    tanggal_lahir: i32,
    female: bool,
    shk: &'static str,
    kawin: &'static str,
    pendidikan: &'static str,
    pekerjaan: &'static str,
    darah: &'static str,
    cacat: &'static str,
    tempat_lahir: Option<String>,
    nik_ibu: Option<String>,
    nama_ibu: Option<String>,
    nik_ayah: Option<String>,
    nama_ayah: Option<String>,
    alamat_sebelumnya: Option<String>,
    no_akta_lahir: Option<String>,
    no_akta_kawin: Option<String>,
    tanggal_kawin: Option<i32>,
    no_akta_cerai: Option<String>,
    tanggal_cerai: Option<i32>,
    record_key: u64,
}

/// One kelurahan to fill.
#[derive(Debug, Clone)]
pub struct KelurahanPlan {
    /// Kemendagri desa/kelurahan code.
    pub kode: String,
    /// Number of people to generate there.
    pub people: u64,
}

/// Errors that can only come from extreme parameters.
#[derive(Debug, thiserror::Error)]
pub enum SerialOverflow {
    /// A kecamatan ran out of NIK serials (`0001`..`9999`) for one DDMMYY part.
    #[error(
        "kecamatan {kec}: more than 9999 people share the NIK birth-date part {part}; the --people scale is too large for this region"
    )]
    Nik {
        /// Kemendagri code of the kecamatan.
        kec: String,
        /// The NIK's DDMMYY birth-date part (40 added to the day for women).
        part: String,
    },
    /// KK serials (`0001`..`9999`) ran out for one issue date in a kecamatan.
    #[error(
        "kecamatan {kec}: more than 9999 KK were issued on {part}; the --people scale is too large for this region"
    )]
    Kk {
        /// Kemendagri code of the kecamatan.
        kec: String,
        /// The KK's DDMMYY issue-date part.
        part: String,
    },
}

/// Generates the people of one kecamatan, owning its random stream and its
/// NIK and KK serial counters.
pub struct KecamatanGenerator<'a> {
    rng: ChaCha8Rng,
    kab: &'a KabContext,
    kode_kec: String,
    kec_digits: String,
    as_of: i32,
    hasher: &'a RecordKeyHasher,
    nik_serial: HashMap<u32, u16>,
    kk_serial: HashMap<u32, u16>,
    religions: &'static [(&'static str, f64)],
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn weighted<T: Copy>(rng: &mut ChaCha8Rng, items: &[(T, f64)]) -> T {
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random::<f64>() * total;
    for (item, w) in items {
        if x < *w {
            return *item;
        }
        x -= w;
    }
    items[items.len() - 1].0
}

/// Triangular distribution on [lo, hi] with mode m.
fn triangular(rng: &mut ChaCha8Rng, lo: f64, m: f64, hi: f64) -> f64 {
    let u: f64 = rng.random();
    let c = (m - lo) / (hi - lo);
    if u < c {
        lo + ((hi - lo) * (m - lo) * u).sqrt()
    } else {
        hi - ((hi - lo) * (hi - m) * (1.0 - u)).sqrt()
    }
}

const ROMAN: [&str; 12] = [
    "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII",
];

impl<'a> KecamatanGenerator<'a> {
    /// A generator for kecamatan `kode_kec` of `kab`, seeded from `seed` and
    /// the code; `as_of` is the reference date in days since 1970-01-01.
    pub fn new(
        seed: u64,
        kab: &'a KabContext,
        kode_kec: &str,
        as_of: i32,
        hasher: &'a RecordKeyHasher,
    ) -> Self {
        // A stable per-kecamatan stream: FNV-1a of the code mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in kode_kec.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        KecamatanGenerator {
            rng: ChaCha8Rng::seed_from_u64(seed ^ h.rotate_left(17)),
            kab,
            kode_kec: kode_kec.to_string(),
            kec_digits: kode_kec.replace('.', ""),
            as_of,
            hasher,
            nik_serial: HashMap::new(),
            kk_serial: HashMap::new(),
            religions: religion_mix(&kab.kode_kab),
        }
    }

    /// Birth date for someone of `age` whole years on the reference date.
    fn birth_for_age(&mut self, age: f64) -> i32 {
        let age = age.clamp(0.0, 99.0);
        let years = age.floor() + self.rng.random::<f64>();
        self.as_of - (years * 365.2425) as i32
    }

    fn age(&self, birth: i32) -> i32 {
        age_on(birth, self.as_of)
    }

    fn sex_male(&mut self) -> bool {
        // Free members (children, relatives, singles) carry the kab's sex
        // ratio; couples are balanced by construction.
        // Calibrated: widowhood and single parenthood add women among
        // heads and the elderly, so free members lean male by 2.5 points
        // for the whole population to match the reference sex ratio.
        self.rng.random::<f64>() < self.kab.male_share + 0.025
    }

    /// Generates households in one kelurahan until it holds `plan.people`
    /// people, handing each row to `sink` in RW/RT order.
    pub fn kelurahan(
        &mut self,
        plan: &KelurahanPlan,
        sink: &mut dyn FnMut(&PersonRow<'_>) -> Result<(), crate::warehouse::SnapshotError>,
    ) -> Result<(), super::GenerateError> {
        let target = plan.people;
        let est_households = (target as f64 / 3.5).ceil().max(1.0) as u64;
        let rt_count = (est_households / 40).max(1);
        let mut made = 0u64;
        let mut household_index = 0u64;
        while made < target {
            let rt_index = (household_index * rt_count / est_households).min(rt_count - 1);
            let rw = rt_index / 6 + 1;
            let rt = rt_index % 6 + 1;
            let mut members = self.household();
            let room = (target - made) as usize;
            members.truncate(room);
            made += members.len() as u64;
            household_index += 1;
            self.emit(&members, plan, rw, rt, rt_index, sink)?;
        }
        Ok(())
    }

    fn household(&mut self) -> Vec<Member> {
        let urban = self.kab.urban;
        let single_p = if urban { 0.095 } else { 0.07 };
        let kind = weighted(
            &mut self.rng,
            &[(0u8, single_p), (1, 0.09), (2, 0.56), (3, 0.08), (4, 0.18)],
        );
        let mut m: Vec<Member> = Vec::with_capacity(6);
        let new = |role, female, birth, marital| Member {
            role,
            female,
            birth,
            marital,
            married_on: None,
            divorced_on: None,
            mother: None,
            father: None,
        };
        match kind {
            0 => {
                // One person: young workers/students, mid-life, or the elderly.
                let band = weighted(
                    &mut self.rng,
                    &[(0u8, if urban { 0.6 } else { 0.40 }), (1, 0.2), (2, 0.30)],
                );
                let (age, female, marital) = match band {
                    0 => {
                        // Students and young workers in rooms (kos): the 20-24
                        // bulge of a city.
                        let a = triangular(&mut self.rng, 18.5, 21.0, 28.0);
                        (a, self.rng.random::<f64>() < 0.45, Marital::Single)
                    }
                    1 => {
                        let a = self.rng.random_range(30.0..60.0);
                        let mar = weighted(
                            &mut self.rng,
                            &[
                                (Marital::Single, 0.5),
                                (Marital::Divorced, 0.3),
                                (Marital::Widowed, 0.2),
                            ],
                        );
                        (a, self.rng.random::<f64>() < 0.5, mar)
                    }
                    _ => {
                        let a = triangular(&mut self.rng, 60.0, 66.0, 95.0);
                        let mar = weighted(
                            &mut self.rng,
                            &[
                                (Marital::Widowed, 0.8),
                                (Marital::Divorced, 0.1),
                                (Marital::Single, 0.1),
                            ],
                        );
                        (a, self.rng.random::<f64>() < 0.7, mar)
                    }
                };
                let birth = self.birth_for_age(age);
                m.push(new(Role::Head, female, birth, marital));
            }
            1 => {
                // Couple without children at home: newly-weds or empty nest.
                let age = if self.rng.random::<f64>() < 0.45 {
                    self.rng.random_range(22.0..32.0)
                } else {
                    triangular(&mut self.rng, 50.0, 63.0, 92.0)
                };
                self.couple(&mut m, age);
            }
            2 | 4 => {
                let age = triangular(&mut self.rng, 23.0, 37.0, 80.0);
                self.couple(&mut m, age);
                self.children(&mut m, 1, Some(0));
                if kind == 4 {
                    self.extended(&mut m);
                }
            }
            _ => {
                // Single parent, usually a mother.
                let female = self.rng.random::<f64>() < 0.8;
                let age = triangular(&mut self.rng, 25.0, 40.0, 70.0);
                let birth = self.birth_for_age(age);
                let marital = if self.rng.random::<f64>() < 0.55 {
                    Marital::Divorced
                } else {
                    Marital::Widowed
                };
                m.push(new(Role::Head, female, birth, marital));
                self.marriage_dates(&mut m[0], None);
                let (mother, father) = if female {
                    (Some(0), None)
                } else {
                    (None, Some(0))
                };
                self.children_of(&mut m, mother, father, 0);
            }
        }
        m
    }

    /// Head and spouse. Most heads are the husband.
    fn couple(&mut self, m: &mut Vec<Member>, head_age: f64) {
        let husband_head = self.rng.random::<f64>() < 0.97;
        let gap = (self.rng.random_range(-2.0..8.0_f64)).round();
        let husband_age = head_age;
        let wife_age = (husband_age - gap).max(18.0);
        let (hb, wb) = (
            self.birth_for_age(husband_age),
            self.birth_for_age(wife_age),
        );
        let mk = |role, female, birth| Member {
            role,
            female,
            birth,
            marital: Marital::Married,
            married_on: None,
            divorced_on: None,
            mother: None,
            father: None,
        };
        if husband_head {
            m.push(mk(Role::Head, false, hb));
            m.push(mk(Role::Spouse, true, wb));
        } else {
            m.push(mk(Role::Head, true, wb));
            m.push(mk(Role::Spouse, false, hb));
        }
        let younger = m[0].birth.max(m[1].birth);
        let age_at_marriage = self.rng.random_range(19.0..28.0);
        let married = younger + (age_at_marriage * 365.2425) as i32;
        let married = married.min(self.as_of - 30);
        m[0].married_on = Some(married);
        m[1].married_on = Some(married);
    }

    fn marriage_dates(&mut self, p: &mut Member, _spouse: Option<usize>) {
        if p.marital == Marital::Single {
            return;
        }
        let married = p.birth + (self.rng.random_range(19.0..28.0) * 365.2425) as i32;
        let married = married.min(self.as_of - 60);
        p.married_on = Some(married);
        if p.marital == Marital::Divorced {
            let span = (self.as_of - married).max(31);
            p.divorced_on = Some(married + self.rng.random_range(30..span));
        }
    }

    fn children(&mut self, m: &mut Vec<Member>, _start: usize, _head: Option<usize>) {
        let (mother, father) = if m[0].female { (0, 1) } else { (1, 0) };
        self.children_of(m, Some(mother), Some(father), mother);
    }

    /// Children of a mother (index `mother_idx` gives the age reference).
    fn children_of(
        &mut self,
        m: &mut Vec<Member>,
        mother: Option<usize>,
        father: Option<usize>,
        age_ref: usize,
    ) {
        let parent_age = self.age(m[age_ref].birth) as f64;
        let n = weighted(
            &mut self.rng,
            &[(1u8, 0.28), (2, 0.35), (3, 0.21), (4, 0.10), (5, 0.06)],
        );
        let mut birth_age = self.rng.random_range(20.0..30.0);
        for _ in 0..n {
            let child_age = parent_age - birth_age;
            birth_age += self.rng.random_range(1.5..5.0);
            if child_age < 0.0 {
                break;
            }
            let stay = if child_age < 21.0 {
                1.0
            } else if child_age < 26.0 {
                if self.kab.urban { 0.8 } else { 0.55 }
            } else if child_age < 32.0 {
                0.25
            } else {
                0.08
            };
            if self.rng.random::<f64>() >= stay {
                continue;
            }
            let female = !self.sex_male();
            let birth = self.birth_for_age(child_age);
            let mut c = Member {
                role: Role::Child,
                female,
                birth,
                marital: Marital::Single,
                married_on: None,
                divorced_on: None,
                mother,
                father,
            };
            if child_age >= 24.0 && self.rng.random::<f64>() < 0.2 {
                c.marital = Marital::Divorced;
                self.marriage_dates(&mut c, None);
            }
            m.push(c);
        }
    }

    fn extended(&mut self, m: &mut Vec<Member>) {
        let head_age = self.age(m[0].birth) as f64;
        let urban = self.kab.urban;
        let extra = weighted(
            &mut self.rng,
            &[
                (Role::Parent, 0.33),
                (Role::ParentInLaw, 0.15),
                (Role::Relative, if urban { 0.40 } else { 0.28 }),
                (Role::Grandchild, 0.15),
                (Role::Helper, 0.04),
            ],
        );
        let blank = |role, female, birth, marital| Member {
            role,
            female,
            birth,
            marital,
            married_on: None,
            divorced_on: None,
            mother: None,
            father: None,
        };
        match extra {
            Role::Parent | Role::ParentInLaw => {
                let age = (head_age + self.rng.random_range(22.0..34.0)).min(98.0);
                let both = self.rng.random::<f64>() < 0.25;
                if both {
                    let b1 = self.birth_for_age(age);
                    let b2 = self.birth_for_age((age - 3.0).max(40.0));
                    m.push(blank(extra, false, b1, Marital::Married));
                    m.push(blank(extra, true, b2, Marital::Married));
                } else {
                    let female = self.rng.random::<f64>() < 0.72;
                    let b = self.birth_for_age(age);
                    m.push(blank(extra, female, b, Marital::Widowed));
                }
                let n = m.len();
                let parents_from = if both { n - 2 } else { n - 1 };
                for p in &mut m[parents_from..n] {
                    self.marriage_dates(p, None);
                }
                if extra == Role::Parent {
                    for i in parents_from..n {
                        if m[i].female {
                            m[0].mother = Some(i);
                        } else {
                            m[0].father = Some(i);
                        }
                    }
                }
            }
            Role::Relative => {
                let k = if self.rng.random::<f64>() < 0.3 { 2 } else { 1 };
                for _ in 0..k {
                    let age = triangular(&mut self.rng, 15.0, 20.0, 30.0);
                    let female = !self.sex_male();
                    let b = self.birth_for_age(age);
                    m.push(blank(Role::Relative, female, b, Marital::Single));
                }
            }
            Role::Grandchild => {
                if head_age >= 45.0 {
                    let age = self.rng.random_range(22.0..(head_age - 18.0).max(23.0));
                    let female = self.rng.random::<f64>() < 0.5;
                    let b = self.birth_for_age(age);
                    let mut inlaw = blank(Role::ChildInLaw, female, b, Marital::Married);
                    self.marriage_dates(&mut inlaw, None);
                    m.push(inlaw);
                    let max_age = (age - 19.0).clamp(1.0, 12.0);
                    for _ in 0..self.rng.random_range(1..3) {
                        let ga = self.rng.random_range(0.0..max_age);
                        let female = !self.sex_male();
                        let b = self.birth_for_age(ga);
                        m.push(blank(Role::Grandchild, female, b, Marital::Single));
                    }
                }
            }
            _ => {
                let age = self.rng.random_range(19.0..50.0);
                let b = self.birth_for_age(age);
                m.push(blank(Role::Helper, true, b, Marital::Single));
            }
        }
    }

    fn nik(&mut self, birth: i32, female: bool) -> Result<String, SerialOverflow> {
        use chrono::Datelike;
        let d = days_to_date(birth);
        let day = d.day() + if female { 40 } else { 0 };
        let part = format!("{:02}{:02}{:02}", day, d.month(), d.year().rem_euclid(100));
        let key = day * 10_000 + d.month() * 100 + d.year().rem_euclid(100) as u32;
        let serial = self.nik_serial.entry(key).or_insert(0);
        if *serial >= 9999 {
            return Err(SerialOverflow::Nik {
                kec: self.kode_kec.clone(),
                part,
            });
        }
        *serial += 1;
        Ok(format!("{}{}{:04}", self.kec_digits, part, serial))
    }

    fn kk(&mut self, head_birth: i32) -> Result<(String, i32), SerialOverflow> {
        use chrono::Datelike;
        let earliest = (head_birth + 17 * 365).max(self.as_of - 20 * 365);
        let issued = if earliest >= self.as_of {
            self.as_of
        } else {
            self.rng.random_range(earliest..=self.as_of)
        };
        let d = days_to_date(issued);
        let part = format!(
            "{:02}{:02}{:02}",
            d.day(),
            d.month(),
            d.year().rem_euclid(100)
        );
        let key = d.day() * 10_000 + d.month() * 100 + d.year().rem_euclid(100) as u32;
        let serial = self.kk_serial.entry(key).or_insert(0);
        if *serial >= 9999 {
            return Err(SerialOverflow::Kk {
                kec: self.kode_kec.clone(),
                part,
            });
        }
        *serial += 1;
        Ok((format!("{}{}{:04}", self.kec_digits, part, serial), issued))
    }

    fn name(&mut self, female: bool, naming: Naming, order: usize) -> String {
        let r = &mut self.rng;
        match naming {
            Naming::Chinese(surname) => {
                let given = if female {
                    pick(r, names::CHINESE_GIVEN_FEMALE)
                } else {
                    pick(r, names::CHINESE_GIVEN_MALE)
                };
                if r.random::<f64>() < 0.5 {
                    format!("{surname} {given}")
                } else {
                    format!(
                        "{given} {}",
                        pick(
                            r,
                            &[
                                "Wijaya",
                                "Halim",
                                "Gunawan",
                                "Tanoto",
                                "Santoso",
                                "Kurniawan"
                            ]
                        )
                    )
                }
            }
            Naming::Bali => {
                let prefix = if female {
                    names::BALI_ORDER_FEMALE[order % names::BALI_ORDER_FEMALE.len()]
                } else {
                    names::BALI_ORDER_MALE[order % names::BALI_ORDER_MALE.len()]
                };
                format!("{prefix} {}", pick(r, names::BALI_GIVEN))
            }
            Naming::Christian => {
                let given = if female {
                    pick(r, names::CHRISTIAN_FEMALE)
                } else {
                    pick(r, names::CHRISTIAN_MALE)
                };
                let last = if female {
                    pick(r, names::SECOND_FEMALE)
                } else {
                    pick(r, names::SECOND)
                };
                format!("{given} {last}")
            }
            Naming::Common => {
                let first = if female {
                    pick(r, names::FEMALE)
                } else {
                    pick(r, names::MALE)
                };
                let parts = weighted(r, &[(1u8, 0.2), (2, 0.6), (3, 0.2)]);
                let mut s = String::from(first);
                for _ in 1..parts {
                    s.push(' ');
                    s.push_str(if female {
                        pick(r, names::SECOND_FEMALE)
                    } else {
                        pick(r, names::SECOND)
                    });
                }
                s
            }
        }
    }

    fn education(&mut self, age: i32) -> &'static str {
        let p = &labels().pendidikan;
        // p[0] TIDAK/BELUM SEKOLAH, p[1] BELUM TAMAT SD, p[2] TAMAT SD,
        // p[3] SLTP, p[4] SLTA, p[5] D I/II, p[6] D III, p[7] D IV/S1,
        // p[8] S2, p[9] S3
        match age {
            ..=6 => p[0],
            7..=12 => p[1],
            13..=15 => p[2],
            16..=18 => p[3],
            19..=22 => p[weighted(&mut self.rng, &[(4usize, 0.85), (3, 0.1), (2, 0.05)])],
            _ => {
                let urban = self.kab.urban;
                let w: [f64; 10] = match (age, urban) {
                    (23..=40, true) => [2.0, 3.0, 9.0, 13.0, 42.0, 3.0, 6.0, 19.0, 2.5, 0.5],
                    (23..=40, false) => [4.0, 7.0, 22.0, 22.0, 32.0, 2.0, 3.0, 7.5, 0.4, 0.1],
                    (41..=60, true) => [4.0, 8.0, 17.0, 15.0, 35.0, 3.0, 5.0, 11.0, 1.7, 0.3],
                    (41..=60, false) => [8.0, 14.0, 32.0, 18.0, 20.0, 1.5, 2.0, 4.2, 0.25, 0.05],
                    (_, true) => [14.0, 18.0, 26.0, 13.0, 19.0, 2.0, 3.0, 4.5, 0.4, 0.1],
                    (_, false) => [24.0, 26.0, 30.0, 9.0, 8.0, 0.8, 0.8, 1.3, 0.08, 0.02],
                };
                let items: Vec<(usize, f64)> = w.iter().copied().enumerate().collect();
                p[weighted(&mut self.rng, &items)]
            }
        }
    }

    fn occupation(
        &mut self,
        age: i32,
        female: bool,
        edu: &str,
        marital: Marital,
        role: Role,
    ) -> &'static str {
        let p = &labels().pendidikan;
        let higher = edu == p[7] || edu == p[8] || edu == p[9];
        let secondary = higher || edu == p[4] || edu == p[5] || edu == p[6];
        if role == Role::Helper {
            return job("PEMBANTU RUMAH TANGGA");
        }
        match age {
            ..=4 => job("BELUM/TIDAK BEKERJA"),
            5..=6 => {
                if self.rng.random::<f64>() < 0.5 {
                    job("PELAJAR/MAHASISWA")
                } else {
                    job("BELUM/TIDAK BEKERJA")
                }
            }
            7..=18 => job("PELAJAR/MAHASISWA"),
            19..=24
                if secondary
                    && self.rng.random::<f64>() < if self.kab.urban { 0.55 } else { 0.3 } =>
            {
                job("PELAJAR/MAHASISWA")
            }
            _ => {
                let r: f64 = self.rng.random();
                if female && marital != Marital::Single && r < 0.42 {
                    return job("MENGURUS RUMAH TANGGA");
                }
                if age >= 58 && r < 0.35 {
                    return if secondary {
                        job("PENSIUNAN")
                    } else {
                        job("BELUM/TIDAK BEKERJA")
                    };
                }
                let urban = self.kab.urban;
                let mut options: Vec<(&str, f64)> = vec![
                    ("WIRASWASTA", 18.0),
                    ("KARYAWAN SWASTA", if urban { 20.0 } else { 8.0 }),
                    ("PEDAGANG", 6.0),
                    ("PERDAGANGAN", 4.0),
                    ("BURUH HARIAN LEPAS", 9.0),
                    ("BELUM/TIDAK BEKERJA", 8.0),
                    ("PETANI/PEKEBUN", if urban { 1.0 } else { 22.0 }),
                    ("BURUH TANI/PERKEBUNAN", if urban { 0.3 } else { 6.0 }),
                    ("NELAYAN/PERIKANAN", if urban { 0.5 } else { 2.0 }),
                    ("SOPIR", if female { 0.1 } else { 2.0 }),
                    ("TUKANG BATU", if female { 0.0 } else { 1.0 }),
                    ("TUKANG JAHIT", if female { 1.0 } else { 0.3 }),
                    ("MEKANIK", if female { 0.0 } else { 0.8 }),
                    ("KONSTRUKSI", if female { 0.1 } else { 1.0 }),
                    ("TRANSPORTASI", 0.8),
                    ("KARYAWAN HONORER", 1.5),
                    ("LAINNYA", 1.0),
                ];
                if secondary {
                    options.extend([
                        ("PEGAWAI NEGERI SIPIL (PNS)", 5.0),
                        (
                            "TENTARA NASIONAL INDONESIA (TNI)",
                            if female { 0.1 } else { 0.8 },
                        ),
                        ("KEPOLISIAN RI (POLRI)", if female { 0.2 } else { 0.8 }),
                        ("KARYAWAN BUMN", 1.2),
                        ("PERAWAT", if female { 1.2 } else { 0.3 }),
                        ("BIDAN", if female { 0.6 } else { 0.0 }),
                    ]);
                }
                if higher {
                    options.extend([
                        ("GURU", 5.0),
                        ("DOSEN", 0.6),
                        ("DOKTER", 0.6),
                        ("AKUNTAN", 0.4),
                        ("APOTEKER", 0.2),
                        ("PENGACARA", 0.2),
                    ]);
                }
                job(weighted(&mut self.rng, &options))
            }
        }
    }

    fn blood(&mut self) -> &'static str {
        let d = &labels().darah;
        // A, B, AB, O, A+, A-, B+, B-, AB+, AB-, O+, O-, TIDAK TAHU
        let w = [
            9.0, 11.0, 3.0, 15.0, 4.0, 0.2, 5.0, 0.2, 1.0, 0.05, 6.0, 0.2, 45.0,
        ];
        let items: Vec<(usize, f64)> = w.iter().copied().enumerate().collect();
        d[weighted(&mut self.rng, &items)]
    }

    fn disability(&mut self, age: i32) -> &'static str {
        let c = &labels().cacat;
        let p = match age {
            ..=17 => 0.006,
            18..=59 => 0.012,
            60..=74 => 0.035,
            _ => 0.07,
        };
        if self.rng.random::<f64>() < p {
            // CACAT FISIK, NETRA/BUTA, RUNGU/WICARA, MENTAL/JIWA,
            // FISIK DAN MENTAL, LAINNYA
            let w = [
                (0usize, 40.0),
                (1, 15.0),
                (2, 15.0),
                (3, 15.0),
                (4, 8.0),
                (5, 7.0),
            ];
            c[weighted(&mut self.rng, &w)]
        } else {
            c[6]
        }
    }

    fn emit(
        &mut self,
        members: &[Member],
        plan: &KelurahanPlan,
        rw: u64,
        rt: u64,
        rt_index: u64,
        sink: &mut dyn FnMut(&PersonRow<'_>) -> Result<(), crate::warehouse::SnapshotError>,
    ) -> Result<(), super::GenerateError> {
        let l = labels();
        // Household-wide facts.
        let agama = weighted(&mut self.rng, self.religions);
        let agama: &'static str = l.agama.get(agama).copied().expect("religion in code list");
        let naming = match agama {
            "BUDHA" | "KHONGHUCU" => Naming::Chinese(pick(&mut self.rng, names::CHINESE_SURNAMES)),
            "HINDU" => Naming::Bali,
            "KRISTEN" | "KATHOLIK" => {
                if matches!(&self.kab.kode_prov[..], "61" | "21" | "19" | "31")
                    && self.rng.random::<f64>() < 0.35
                {
                    Naming::Chinese(pick(&mut self.rng, names::CHINESE_SURNAMES))
                } else {
                    Naming::Christian
                }
            }
            _ => Naming::Common,
        };
        let street = names::STREETS[(rt_index as usize * 7 + rw as usize) % names::STREETS.len()];
        let alamat = format!("{street} NO. {}", self.rng.random_range(1..200));
        let no_rt = format!("{rt:03}");
        let no_rw = format!("{rw:03}");
        let (no_kk, _) = self.kk(members[0].birth)?;
        let kab4 = self.kec_digits[..4].to_string();
        let moved_in = self.rng.random::<f64>() < 0.12;
        let alamat_sebelumnya = moved_in.then(|| {
            format!(
                "{} NO. {}",
                pick(&mut self.rng, names::STREETS),
                self.rng.random_range(1..200)
            )
        });

        let mut people: Vec<Person> = Vec::with_capacity(members.len());
        for (i, mbr) in members.iter().enumerate() {
            let age = self.age(mbr.birth);
            let nik = self.nik(mbr.birth, mbr.female)?;
            let nama = self.name(mbr.female, naming, i);
            let pendidikan = self.education(age);
            let pekerjaan = self.occupation(age, mbr.female, pendidikan, mbr.marital, mbr.role);
            let kawin = match mbr.marital {
                Marital::Single => l.kawin[0],
                Marital::Married => l.kawin[1],
                Marital::Divorced => l.kawin[2],
                Marital::Widowed => l.kawin[3],
            };
            let shk = match mbr.role {
                Role::Head => l.shk[0],
                Role::Spouse => {
                    if mbr.female {
                        l.shk[2]
                    } else {
                        l.shk[1]
                    }
                }
                Role::Child => l.shk[3],
                Role::ChildInLaw => l.shk[4],
                Role::Grandchild => l.shk[5],
                Role::Parent => l.shk[6],
                Role::ParentInLaw => l.shk[7],
                Role::Relative => l.shk[8],
                Role::Helper => l.shk[9],
            };
            let akta_lahir_p = match age {
                ..=17 => 0.93,
                18..=40 => 0.75,
                41..=60 => 0.55,
                _ => 0.35,
            };
            let no_akta_lahir = (self.rng.random::<f64>() < akta_lahir_p).then(|| {
                let d = days_to_date(mbr.birth);
                format!("{kab4}-LT-{}-{}", d.format("%d%m%Y"), &nik[12..])
            });
            let no_akta_kawin = match (mbr.marital, mbr.married_on) {
                (Marital::Single, _) | (_, None) => None,
                (_, Some(d)) => (self.rng.random::<f64>() < 0.85).then(|| {
                    use chrono::Datelike;
                    let date = days_to_date(d);
                    format!(
                        "{:04}/{:03}/{}/{}",
                        self.rng.random_range(1..2000),
                        self.rng.random_range(1..300),
                        ROMAN[date.month0() as usize],
                        date.year()
                    )
                }),
            };
            let no_akta_cerai = match mbr.divorced_on {
                Some(d) if self.rng.random::<f64>() < 0.65 => {
                    use chrono::Datelike;
                    Some(format!(
                        "{:04}/AC/{}/PA.{kab4}",
                        self.rng.random_range(1..3000),
                        days_to_date(d).year()
                    ))
                }
                _ => None,
            };
            let local_birth = matches!(mbr.role, Role::Child | Role::Grandchild)
                || self.rng.random::<f64>() < 0.7;
            let tempat_lahir = if local_birth {
                Some(self.kab.birthplace.clone())
            } else if self.rng.random::<f64>() < 0.97 {
                let kabs = crate::catalog::kab_population();
                let kab = &kabs[self.rng.random_range(0..kabs.len())];
                Some(super::birthplace_label(&kab.nama))
            } else {
                None
            };
            let record_key = self.hasher.key(&nik);
            people.push(Person {
                nik,
                nama,
                tanggal_lahir: mbr.birth,
                female: mbr.female,
                shk,
                kawin,
                pendidikan,
                pekerjaan,
                darah: self.blood(),
                cacat: self.disability(age),
                tempat_lahir,
                nik_ibu: None,
                nama_ibu: None,
                nik_ayah: None,
                nama_ayah: None,
                alamat_sebelumnya: alamat_sebelumnya.clone(),
                no_akta_lahir,
                no_akta_kawin,
                tanggal_kawin: if mbr.marital == Marital::Single {
                    None
                } else {
                    mbr.married_on
                },
                no_akta_cerai,
                tanggal_cerai: mbr.divorced_on,
                record_key,
            });
        }
        // Parents: link to household members where present, else a name only.
        for (i, mbr) in members.iter().enumerate() {
            // A household cut short at the kelurahan's quota may lose the
            // parent a member points to.
            let present = |j: Option<usize>| j.filter(|&j| j < people.len());
            let (nik_ibu, nama_ibu) = match present(mbr.mother) {
                Some(j) => (Some(people[j].nik.clone()), Some(people[j].nama.clone())),
                None => (None, Some(self.name(true, Naming::Common, 0))),
            };
            let (nik_ayah, nama_ayah) = match present(mbr.father) {
                Some(j) => (Some(people[j].nik.clone()), Some(people[j].nama.clone())),
                None => (
                    None,
                    (self.rng.random::<f64>() < 0.9).then(|| self.name(false, Naming::Common, 0)),
                ),
            };
            let p = &mut people[i];
            p.nik_ibu = nik_ibu;
            p.nama_ibu = nama_ibu;
            p.nik_ayah = nik_ayah;
            p.nama_ayah = nama_ayah;
        }
        let kode_kel = plan.kode.as_str();
        for p in &people {
            let row = PersonRow {
                no_kk: &no_kk,
                nik: &p.nik,
                nama_lengkap: &p.nama,
                jenis_kelamin: l.sex[usize::from(p.female)],
                tempat_lahir: p.tempat_lahir.as_deref(),
                tanggal_lahir: p.tanggal_lahir,
                golongan_darah: p.darah,
                agama,
                status_perkawinan: p.kawin,
                status_hubungan_keluarga: p.shk,
                penyandang_cacat: p.cacat,
                pendidikan_terakhir: p.pendidikan,
                jenis_pekerjaan: p.pekerjaan,
                nik_ibu: p.nik_ibu.as_deref(),
                nama_ibu: p.nama_ibu.as_deref(),
                nik_ayah: p.nik_ayah.as_deref(),
                nama_ayah: p.nama_ayah.as_deref(),
                alamat_sebelumnya: p.alamat_sebelumnya.as_deref(),
                alamat: &alamat,
                no_rt: &no_rt,
                no_rw: &no_rw,
                kode_prov: &self.kab.kode_prov,
                kode_kec: &self.kode_kec,
                kode_kel,
                akta_lahir: l.ada[usize::from(p.no_akta_lahir.is_none())],
                no_akta_lahir: p.no_akta_lahir.as_deref(),
                akta_kawin: l.ada[usize::from(p.no_akta_kawin.is_none())],
                no_akta_kawin: p.no_akta_kawin.as_deref(),
                tanggal_kawin: p.tanggal_kawin,
                akta_cerai: l.ada[usize::from(p.no_akta_cerai.is_none())],
                no_akta_cerai: p.no_akta_cerai.as_deref(),
                tanggal_cerai: p.tanggal_cerai,
                record_key: p.record_key,
            };
            sink(&row)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_is_calendar_exact() {
        let d = |s: &str| date_to_days(s.parse().unwrap());
        assert_eq!(age_on(d("2019-07-01"), d("2026-07-01")), 7);
        assert_eq!(age_on(d("2019-07-02"), d("2026-07-01")), 6);
        assert_eq!(age_on(d("2020-02-29"), d("2026-02-28")), 5);
        assert_eq!(days_to_date(d("2026-06-30")).to_string(), "2026-06-30");
    }

    #[test]
    fn every_occupation_label_exists() {
        for j in [
            "PEMBANTU RUMAH TANGGA",
            "BELUM/TIDAK BEKERJA",
            "PELAJAR/MAHASISWA",
            "MENGURUS RUMAH TANGGA",
            "PENSIUNAN",
            "WIRASWASTA",
            "KARYAWAN SWASTA",
            "PEDAGANG",
            "PERDAGANGAN",
            "BURUH HARIAN LEPAS",
            "PETANI/PEKEBUN",
            "BURUH TANI/PERKEBUNAN",
            "NELAYAN/PERIKANAN",
            "SOPIR",
            "TUKANG BATU",
            "TUKANG JAHIT",
            "MEKANIK",
            "KONSTRUKSI",
            "TRANSPORTASI",
            "KARYAWAN HONORER",
            "LAINNYA",
            "PEGAWAI NEGERI SIPIL (PNS)",
            "TENTARA NASIONAL INDONESIA (TNI)",
            "KEPOLISIAN RI (POLRI)",
            "KARYAWAN BUMN",
            "PERAWAT",
            "BIDAN",
            "GURU",
            "DOSEN",
            "DOKTER",
            "AKUNTAN",
            "APOTEKER",
            "PENGACARA",
        ] {
            job(j);
        }
        for kab in ["61.71", "61.01", "51.01", "11.01", "94.01"] {
            for (r, _) in religion_mix(kab) {
                assert!(labels().agama.contains_key(r), "{r}");
            }
        }
    }
}
