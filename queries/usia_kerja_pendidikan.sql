-- name = "usia_kerja_pendidikan"
-- title = "Penduduk usia kerja (15-64) menurut pendidikan terakhir dan jenis kelamin per kecamatan"
-- description = "Jumlah penduduk umur 15 sampai 64 tahun pada tanggal data menurut pendidikan terakhir, jenis kelamin dan kelompok umur lima tahunan, per kecamatan."
-- elements = ["tanggal_lahir", "pendidikan_terakhir", "jenis_kelamin", "kode_kec"]
--
-- [params.jenis_kelamin]
-- type = "string"
-- code_list = "jenis_kelamin"
-- optional = true
-- description = "Batasi ke satu jenis kelamin (LAKI-LAKI atau PEREMPUAN; kode SIAK 1/2 juga diterima)"
--
-- [params.kecamatan]
-- type = "region"
-- level = "kecamatan"
-- optional = true
-- description = "Batasi ke satu kecamatan (kode Kemendagri, mis. 61.71.01)"
SELECT
    kode_kec,
    pendidikan_terakhir,
    jenis_kelamin,
    kelompok_umur(umur(tanggal_lahir), 5) AS kelompok_umur,
    COUNT(*) AS jumlah
FROM penduduk
WHERE umur(tanggal_lahir) BETWEEN 15 AND 64
    {{#jenis_kelamin}} AND jenis_kelamin = {{jenis_kelamin}} {{/jenis_kelamin}}
    {{#kecamatan}} AND kode_kec = {{kecamatan}} {{/kecamatan}}
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
