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
    COUNT(*) AS jumlah
FROM penduduk
WHERE (umur(tanggal_lahir) >= 17 OR status_perkawinan <> 'BELUM KAWIN')
    {{#kecamatan}} AND kode_kec = {{kecamatan}} {{/kecamatan}}
GROUP BY 1
ORDER BY 1
