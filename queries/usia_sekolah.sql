-- name = "usia_sekolah"
-- title = "Anak usia sekolah per kelurahan dan jenis kelamin (umur pada 1 Juli tahun ajaran)"
-- description = "Jumlah anak umur 5 sampai 18 tahun menurut umur tunggal pada 1 Juli tahun ajaran, per kelurahan dan jenis kelamin, dengan jenjang sekolah sesuai umur: PRA-SD (5-6), SD (7-12), SMP (13-15), SMA (16-18). Permintaan dinas pendidikan."
-- elements = ["tanggal_lahir", "jenis_kelamin", "kode_kec", "kode_kel"]
--
-- [params.tahun_ajaran]
-- type = "integer"
-- default = 2026
-- min = 2020
-- max = 2035
-- description = "Tahun ajaran; umur dihitung pada 1 Juli tahun ini"
--
-- [params.kecamatan]
-- type = "region"
-- level = "kecamatan"
-- optional = true
-- description = "Batasi ke satu kecamatan (kode Kemendagri, mis. 61.71.01)"
SELECT
    kode_kel,
    jenis_kelamin,
    umur_pada(tanggal_lahir, DATE '{{tahun_ajaran}}-07-01') AS umur,
    CASE
        WHEN umur_pada(tanggal_lahir, DATE '{{tahun_ajaran}}-07-01') BETWEEN 7 AND 12 THEN 'SD'
        WHEN umur_pada(tanggal_lahir, DATE '{{tahun_ajaran}}-07-01') BETWEEN 13 AND 15 THEN 'SMP'
        WHEN umur_pada(tanggal_lahir, DATE '{{tahun_ajaran}}-07-01') BETWEEN 16 AND 18 THEN 'SMA'
        ELSE 'PRA-SD'
    END AS jenjang,
    COUNT(*) AS jumlah
FROM penduduk
WHERE umur_pada(tanggal_lahir, DATE '{{tahun_ajaran}}-07-01') BETWEEN 5 AND 18
    {{#kecamatan}} AND kode_kec = {{kecamatan}} {{/kecamatan}}
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
