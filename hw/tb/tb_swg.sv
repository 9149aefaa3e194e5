// Unit-test wrapper: bnnc_swg with out_data = {row, col, mask, window}.
module tb_swg #(
    parameter int IH = 4,
    parameter int IW = 4,
    parameter int C = 1,
    parameter int EB = 1,
    parameter int KH = 3,
    parameter int KW = 3,
    parameter int SH = 1,
    parameter int SW = 1,
    parameter int PT = 0,
    parameter int PL = 0,
    parameter int OH = 2,
    parameter int OW = 2,
    parameter int R = KH + SH,
    localparam int T = KH * KW,
    localparam int RB = OH > 1 ? $clog2(OH) : 1,
    localparam int CB = OW > 1 ? $clog2(OW) : 1,
    localparam int OWD = RB + CB + T + T * C * EB
) (
    input  logic            clk,
    input  logic            rst_n,
    input  logic            in_valid,
    output logic            in_ready,
    input  logic [C*EB-1:0] in_data,
    output logic            out_valid,
    input  logic            out_ready,
    output logic [ OWD-1:0] out_data
);
  logic [T*C*EB-1:0] window;
  logic [T-1:0] mask;
  logic [RB-1:0] row;
  logic [CB-1:0] col;
  bnnc_swg #(
      .IH(IH), .IW(IW), .C(C), .EB(EB), .KH(KH), .KW(KW), .SH(SH), .SW(SW), .PT(PT), .PL(PL),
      .OH(OH), .OW(OW), .R(R)
  ) dut (
      .clk(clk), .rst_n(rst_n), .in_valid(in_valid), .in_ready(in_ready), .in_data(in_data),
      .out_valid(out_valid), .out_ready(out_ready), .out_data(window), .out_mask(mask),
      .out_row(row), .out_col(col)
  );
  assign out_data = {row, col, mask, window};
endmodule
