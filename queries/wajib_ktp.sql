-- name = "wajib_ktp"
-- title = "Penduduk wajib KTP-el per kelurahan"
-- description = "Jumlah penduduk wajib KTP-el (UU 24/2013 Pasal 63): umur 17 tahun ke atas pada tanggal data, atau sudah/pernah kawin (status perkawinan selain BELUM KAWIN), per kelurahan."
-- elements = ["tanggal_lahir", "status_perkawinan", "kode_kec", "kode_kel"]
--
-- [params.kecamatan]
-- type = "region"
-- level = "kecamatan"
-- optional = true
-- description = "Batasi ke satu kecamatan (kode Kemendagri, mis. 61.71.01)"
SELECT
    kode_kel,
    wajib_ktp(umur(tanggal_lahir), status_perkawinan) AS wajib_ktp,
    COUNT(*) AS jumlah
FROM penduduk
WHERE wajib_ktp(umur(tanggal_lahir), status_perkawinan) = 'WAJIB'
    {{#kecamatan}} AND kode_kec = {{kecamatan}} {{/kecamatan}}
GROUP BY 1, 2
ORDER BY 1
