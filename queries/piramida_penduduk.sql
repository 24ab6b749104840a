-- name = "piramida_penduduk"
-- title = "Piramida penduduk: kelompok umur 5 tahunan menurut jenis kelamin per kecamatan"
-- description = "Jumlah penduduk per kecamatan menurut kelompok umur 5 tahunan (00-04 ... 75+) dan jenis kelamin. Umur pada tanggal data, atau pada tanggal 1 suatu bulan bila parameter tanggal diisi."
-- elements = ["tanggal_lahir", "jenis_kelamin", "kode_kec"]
--
-- [params.tanggal]
-- type = "date"
-- first_of_month = true
-- min = "1990-01-01"
-- max = "2040-12-01"
-- optional = true
-- description = "Tanggal acuan umur (tanggal 1 suatu bulan, mis. 2026-07-01); kosong = tanggal data"
--
-- [params.kecamatan]
-- type = "region"
-- level = "kecamatan"
-- optional = true
-- description = "Batasi ke satu kecamatan (kode Kemendagri, mis. 61.71.01)"
SELECT
    kode_kec,
    kelompok_umur({{#tanggal}}umur_pada(tanggal_lahir, {{tanggal}}){{/tanggal}}{{^tanggal}}umur(tanggal_lahir){{/tanggal}}, 5) AS kelompok_umur,
    jenis_kelamin,
    COUNT(*) AS jumlah
FROM penduduk
{{#kecamatan}}WHERE kode_kec = {{kecamatan}}{{/kecamatan}}
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
