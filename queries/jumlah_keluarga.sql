-- name = "jumlah_keluarga"
-- title = "Jumlah keluarga (KK) per kelurahan"
-- description = "Jumlah keluarga, dihitung sebagai nomor KK yang berbeda, per kelurahan."
-- elements = ["no_kk", "kode_kec", "kode_kel"]
--
-- [params.kecamatan]
-- type = "region"
-- level = "kecamatan"
-- optional = true
-- description = "Batasi ke satu kecamatan (kode Kemendagri, mis. 61.71.01)"
SELECT
    kode_kel,
    COUNT(DISTINCT no_kk) AS jumlah_keluarga
FROM penduduk
{{#kecamatan}}WHERE kode_kec = {{kecamatan}}{{/kecamatan}}
GROUP BY 1
ORDER BY 1
